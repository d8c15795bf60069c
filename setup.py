"""Build for mulo: the Python packages (``mulo`` and ``mulo.kernels`` from ``kernels/``) and, when its
sources exist, the optional native extension ``mulo._C`` built from ``csrc/`` (see csrc/README.md).

``pip install --no-build-isolation -e .`` (what ``make install`` runs). Set ``MULO_BUILD_EXT=0`` to skip
the native extension; a failed native build is reported and skipped unless ``MULO_BUILD_EXT=1`` demands it.
"""

from __future__ import annotations

import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def native_extensions() -> tuple[list, dict]:
    """The ``mulo._C`` extension and its build command class, or nothing when there is nothing to build."""
    if os.environ.get("MULO_BUILD_EXT", "auto") == "0":
        return [], {}
    sys.path.insert(0, os.path.join(ROOT, "csrc"))
    try:
        import build_ext_config  # csrc/build_ext_config.py: the one list of sources and flags
    except ImportError:
        return [], {}
    finally:
        sys.path.pop(0)
    return build_ext_config.extensions(ROOT), build_ext_config.cmdclass()


ext_modules, cmdclass = native_extensions()


WEIGHT_DIRS = ("mulo/lopt/pretrained", "mulo/celo2/pretrained")  # μLO's and Celo2's shipped meta-weights


def weight_packages() -> list[str]:
    """Each shipped set of meta-weights (a ``NAME/`` directory with a config.json under one of WEIGHT_DIRS) is
    a data-only package: listed as such, setuptools installs its files instead of warning that it would be
    ignored."""
    out = []
    for rel in WEIGHT_DIRS:
        base = os.path.join(ROOT, *rel.split("/"))
        names = sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, "config.json")))
        out += [f"{rel.replace('/', '.')}.{name}" for name in names]
    return out


WEIGHT_FILES = ["*.json", "*.safetensors", "*.md", "*.png"]
packages = find_packages(include=["mulo", "mulo.*"]) + ["mulo.kernels"] + weight_packages()
setup(
    packages=packages,
    package_dir={"mulo": "mulo", "mulo.kernels": "kernels"},
    package_data={name: WEIGHT_FILES for name in weight_packages()},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
