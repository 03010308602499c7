"""modelsync: one package whose sub-packages are the repository's top-level folders.

The repository root is the `modelsync` package so that every internal import is absolute and unique
(`modelsync.shared...`): inside Forge, other extensions' top-level `shared`, `server` or `utils`
modules cannot shadow ours.
"""

__version__ = "0.2.0"
