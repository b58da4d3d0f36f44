"""The packages, here because pyproject.toml cannot map a folder outside the package into it: the
shipped models in weights/ (whatever *.pt, *.md and *.calibration.json files are there at build time) travel in the
wheel as the package data `vsa_search/shipped_models/`, where `paths.shipped_models_dir()` finds them
through importlib.resources. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["vsa_search", "vsa_search.*"]), "vsa_search.shipped_models"],
    package_dir={"vsa_search.shipped_models": "weights"},
    package_data={"vsa_search": ["data/*.json", "serve/static/*"], "vsa_search.shipped_models": ["*.pt", "*.md",
                                                                                          "*.calibration.json"]},
)
