"""The package as pip builds it: no WebUI installer or build script inside, no build warnings, complete metadata, and
runtime dependencies that are exactly what the code imports."""
import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from modelsync import __version__

REPO = Path(__file__).resolve().parent.parent
RUNTIME_CODE = ("shared", "server", "cli", "extension", "scripts")
# requirement -> the module the code imports (or, for uvicorn's optional speed-ups, the module that names them)
IMPORT_NAMES = {"sqlite-utils": "sqlite_utils", "pillow": "PIL"}
USED_THROUGH = {"httptools": "uvicorn", "uvloop": "uvicorn"}


def imported_modules() -> set[str]:
    names: set[str] = set()
    for folder in RUNTIME_CODE:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def test_the_wheel_holds_the_package_only_and_builds_without_warnings(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                            str(REPO)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert not re.search(r"Warning|would be ignored|deprecated", build.stdout + build.stderr), build.stdout + build.stderr
    wheel = zipfile.ZipFile(next(tmp_path.glob("modelsync-*.whl")))
    names = set(wheel.namelist())
    assert "modelsync/install.py" not in names and "modelsync/setup.py" not in names
    assert {"modelsync/cli/main.py", "modelsync/server/templates/base.html", "modelsync/server/static/common.js"} <= names
    assert not any(n.startswith(("modelsync/tests/", "modelsync/bench/", "modelsync/docs/")) for n in names)
    metadata = wheel.read(f"modelsync-{__version__}.dist-info/METADATA").decode()
    for line in (f"Version: {__version__}", "License-Expression: MIT", "License-File: LICENSE", "Project-URL: Documentation"):
        assert line in metadata
    assert "Classifier: Programming Language :: Python :: 3" in metadata

    runtime = [re.split(r"[<>=;\s\[]", line.split(":", 1)[1].strip())[0].lower() for line in metadata.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line]
    imported = imported_modules()
    for requirement in runtime:
        module = USED_THROUGH.get(requirement) or IMPORT_NAMES.get(requirement, requirement.replace("-", "_"))
        assert module in imported, f"{requirement} is a runtime dependency that no runtime code imports"
    for test_only in ("safetensors", "numpy", "yaml"):
        assert test_only not in imported and test_only not in runtime
