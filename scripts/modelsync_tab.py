"""Forge/A1111 entry: make this repository importable as `modelsync`, then register the callbacks.

The host loads this file by path with the extension folder (and every other extension's folder) on
sys.path, so top-level names like `shared` or `extension` may belong to someone else; everything below
imports through the unique package name `modelsync`.
"""
import importlib.util
import os
import sys

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _register_package() -> None:
    loaded = sys.modules.get("modelsync")
    loaded_from = getattr(loaded, "__file__", None) if loaded is not None else None
    if loaded_from and os.path.dirname(os.path.realpath(loaded_from)) == EXTENSION_ROOT:
        return
    for name in [n for n in sys.modules if n == "modelsync" or n.startswith("modelsync.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "modelsync", os.path.join(EXTENSION_ROOT, "__init__.py"), submodule_search_locations=[EXTENSION_ROOT]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["modelsync"] = module
    spec.loader.exec_module(module)


_register_package()

from modelsync.extension.forge_callbacks import register

register()
