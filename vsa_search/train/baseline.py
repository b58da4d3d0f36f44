"""The global baseline of `vsa eval recall`, trained on demand: when no shipped baseline fits the
features, one is trained on them and cached under $VSA_HOME/cache, keyed by what it depends on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.config import EMBED_PRESETS, to_dict
from ..models.alignment import LoadedAlign, load_align
from ..vision.features import FeatureStore
from .embed import train_embed


def train_global_baseline(model: LoadedAlign, features: Path, dataset: Any, device: str | None = None,
                          on_baseline: Callable[[str], None] | None = None) -> tuple[LoadedAlign | None, str]:
    """A global baseline trained on the train photos in `features` with `model`'s vocabulary (or
    the cached one of an earlier run). Returns (LoadedAlign or None, where it came from)."""
    cfg = EMBED_PRESETS["global"]
    with FeatureStore(features, readonly=True) as store:
        n_train = sum(r.image_id in store for r in dataset.present("train"))
    if n_train == 0:
        return None, f"none: {features} holds no train photos to train one on (pass --features)"
    blob = json.dumps({"cfg": to_dict(cfg), "extractor": model.region_config.extractor_id(),
                       "vocab": model.vocab.itos, "train": n_train}, sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:12]
    cached = paths.cache_dir() / f"baseline-{key}.pt"
    if not cached.exists():
        if on_baseline:
            on_baseline(f"training the global baseline on {n_train} train photos (cached in {cached})")
        train_embed(features, cached, cfg, vocab=model.vocab, dataset=dataset, device=device,
                    keep_train_state=False)  # a cache entry is never resumed
    return load_align(cached), f"{cached} (trained on {n_train} train photos of {features})"
