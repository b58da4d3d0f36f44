"""Where things live. `$VSA_HOME` is the data root when set. Otherwise a checkout keeps everything in
itself (`indexes/`, `weights/`, `cache/`), and an installed package uses the platform's user data and
cache folders (platformdirs), never its own install folder. The shipped models come from the package
data `vsa_search/shipped_models/` when installed and from the checkout's `weights/` otherwise (model
files live in `weights/`, never to be mistaken for the code in `vsa_search/models/`)."""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

APP = "vsa-search"
REPO_ROOT = Path(__file__).resolve().parents[2]  # vsa_search/core/paths.py -> the checkout
# The wheel's build maps weights/ to this package-data folder (setup.py).
SHIPPED_PACKAGE_DIR = "shipped_models"
# The models a command uses when none is named (find_model resolves a name).
ALIGN_MODEL = "align"  # weights/align.pt: the alignment model (search, align, re-ranking)
CAPTION_MODEL = "caption-ensemble"  # weights/caption-ensemble.pt, shipped: caption-attend.pt + caption-regions.pt
REGION_CAPTION_MODEL = "caption-regions"  # weights/caption-regions.pt: trained with `vsa train caption --regions`
_resource_files = ExitStack()
atexit.register(_resource_files.close)


def in_checkout() -> bool:
    """A source checkout (pyproject.toml beside the package), not an installed wheel."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def home() -> Path:
    """The data root: $VSA_HOME, else the checkout, else the user data folder."""
    env = os.environ.get("VSA_HOME")
    if env:
        return Path(env).expanduser()
    if in_checkout():
        return REPO_ROOT
    import platformdirs

    return platformdirs.user_data_path(APP)


def home_source() -> str:
    """Why home() is where it is: "VSA_HOME", "checkout" or "user folders"."""
    return "VSA_HOME" if os.environ.get("VSA_HOME") else "checkout" if in_checkout() else "user folders"


def indexes_dir() -> Path:
    return home() / "indexes"


def models_dir() -> Path:
    """User models: $VSA_HOME/weights (in a checkout, its weights/ folder)."""
    return home() / "weights"


def older_models_dir() -> Path:
    """Where a data root kept its models before the folder was named weights/: still searched by
    find_model, after weights/, so that models trained then keep resolving by name."""
    return home() / "models"


def cache_dir() -> Path:
    """Re-creatable files (feature caches, trained baselines): under the data root when it is
    $VSA_HOME or a checkout, else the user cache folder."""
    if os.environ.get("VSA_HOME") or in_checkout():
        return home() / "cache"
    import platformdirs

    return platformdirs.user_cache_path(APP)


def shipped_models_dir() -> Path:
    """The shipped models: weights/ in a checkout, else the installed package data (through
    importlib.resources; a zipped install is extracted once per process)."""
    if in_checkout():
        return REPO_ROOT / "weights"
    ref = resources.files("vsa_search") / SHIPPED_PACKAGE_DIR
    return Path(_resource_files.enter_context(resources.as_file(ref)))


def shipped_models() -> list[Path]:
    """The shipped model files, sorted by name."""
    d = shipped_models_dir()
    return sorted(d.glob("*.pt")) if d.is_dir() else []


def find_model(name: str) -> Path:
    """Resolve a model name or path: an existing path wins, then the user models (weights/, then the
    older models/ folder), then shipped."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for base in (models_dir(), older_models_dir(), shipped_models_dir()):
        for cand in (base / name, base / f"{name}.pt"):
            if cand.exists():
                return cand
    return p


def shared_dir() -> Path:
    """The read-only shared data ($VSA_SHARED; beside a checkout, ../shared; else under the data root)."""
    env = os.environ.get("VSA_SHARED")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" if in_checkout() else home() / "shared"


def flickr8k_root() -> Path:
    return shared_dir() / "data" / "flickr8k"
