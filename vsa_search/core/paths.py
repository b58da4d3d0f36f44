"""Where things live. `$VSA_HOME` is the data root; a checkout defaults to its own
`indexes/` and `models/` so that shipped models are found without set-up."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # vsa_search/core/paths.py -> the checkout


def home() -> Path:
    env = os.environ.get("VSA_HOME")
    return Path(env).expanduser() if env else REPO_ROOT


def indexes_dir() -> Path:
    return home() / "indexes"


def models_dir() -> Path:
    """User models under $VSA_HOME/models; shipped models always under the package checkout."""
    return home() / "models"


def shipped_models_dir() -> Path:
    return REPO_ROOT / "models"


def find_model(name: str) -> Path:
    """Resolve a model name or path: an existing path wins, then $VSA_HOME/models, then shipped."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    for base in (models_dir(), shipped_models_dir()):
        for cand in (base / name, base / f"{name}.pt"):
            if cand.exists():
                return cand
    return p


def shared_dir() -> Path:
    """The read-only shared data beside a checkout (Flickr8k photos, reference figures)."""
    env = os.environ.get("VSA_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def flickr8k_root() -> Path:
    return shared_dir() / "data" / "flickr8k"
