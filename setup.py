"""Map the repository's top-level folders into the one ``dagserve`` import package.

``engine/`` -> ``dagserve.engine``, ``archiver/`` -> ``dagserve.archiver``, ``workflows/`` ->
``dagserve.workflows`` (subpackages follow), so a wheel holds only ``dagserve/``. Metadata
lives in pyproject.toml; only the package mapping is computed here, so a new subpackage
needs no edit."""

from setuptools import find_packages, setup

MAPPED = ("engine", "archiver", "workflows")

packages = ["dagserve"] + [f"dagserve.{name}" for name in
                           find_packages(include=[f"{top}*" for top in MAPPED])]
package_dir = {"dagserve": "dagserve", **{f"dagserve.{top}": top for top in MAPPED}}

setup(packages=packages, package_dir=package_dir)
