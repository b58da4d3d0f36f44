"""`vsa train generator-prior`: store in a caption model file the training photos over which a sentence's
mean probability P̄(s) is taken when the generator re-ranks retrieval (evaluation/generative.py); nothing is
trained. The photos are drawn from the training split only, with a fixed seed; the count is measured on dev
(weights/caption-ensemble.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import StoreError, UsageError
from ..data.datasets import load_flickr8k
from ..evaluation.generative import generator_inputs, prior_photos
from ..models.captioner import load_caption, save_caption
from ..models.likelihood import PRIOR_PHOTOS
from ..vision.features import FeatureStore, require_extractor

PRIOR_REGIONS = 10  # regions kept of each prior photo (the full frame first): 12.8 KB a photo in 8 bits, so that
# the shipped two-generator file (24.4 MB) stays within 25 MB


def add_prior(model: str | Path, features: str | Path, out: str | Path, photos: int = PRIOR_PHOTOS,
              regions: int = PRIOR_REGIONS, seed: int = 0, dataset: Any = None) -> dict[str, Any]:
    """Write caption model `model` to `out` with `photos` training photos' inputs (their features from the
    store `features`, the first `regions` rows of each), drawn with `seed`."""
    if photos < 1 or regions < 1:
        raise UsageError("--photos and --regions need at least 1")
    t0 = time.perf_counter()
    loaded = load_caption(paths.find_model(str(model)))
    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, loaded.region_config, Path(features), loaded.path)
        train = [r.image_id for r in ds.present("train") if r.image_id in store]
        if len(train) < photos:
            raise StoreError(f"{features}: {len(train)} training photos; the prior needs --photos {photos}")
        ids = prior_photos(train, photos, seed)
        inputs = generator_inputs(loaded, store, ids)
    if inputs.dim() == 3:  # a generator that attends: the missing rows are masked as a short photo's are
        inputs = inputs[:, :regions]
    save_caption(loaded.model, loaded.vocab, loaded.region_config, out, half=True, prior=inputs,
                 metrics={**loaded.metrics, "prior": {"photos": photos, "regions": int(inputs.shape[1])
                                                      if inputs.dim() == 3 else 1, "seed": seed}})
    return {"model": str(out), "from": str(loaded.path), "photos": photos, "seed": seed,
            "train_photos_available": len(train), "seconds": round(time.perf_counter() - t0, 1)}
