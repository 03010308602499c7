"""Only what pyproject.toml cannot say: the WebUI's install.py sits in the package root (the repository is the
extension), runs from the repository only, and fails when imported from an installed package: keep it out of the wheel."""
from setuptools import setup
from setuptools.command.build_py import build_py


OUTSIDE_THE_WHEEL = {("modelsync", "install"), ("modelsync", "setup")}


class BuildPyWithoutWebUIInstaller(build_py):
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[:2] not in OUTSIDE_THE_WHEEL]


setup(cmdclass={"build_py": BuildPyWithoutWebUIInstaller})
