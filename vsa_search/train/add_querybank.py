"""`vsa train querybank`: add a querybank (models/querybank.py) to an alignment model file; nothing is
trained. The bank is drawn from the training split only, with a fixed seed; bank sizes, β and the weight are chosen on
the dev split by `vsa eval querybank-tune` (querybank_tune.py)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import UsageError
from ..data.datasets import load_flickr8k
from ..evaluation.recall import retrieval_data
from ..models.alignment import LoadedAlign, load_align, save_align
from ..models.querybank import QueryBank
from ..vision.features import FeatureStore, require_extractor

DEFAULT_SENTENCES = 1000
DEFAULT_PHOTOS = 200
DEFAULT_BETA = 5.0
DEFAULT_WEIGHT = 0.5
DEFAULT_BITS = 8


def add_querybank(model: str | Path, features: str | Path, out: str | Path, sentences: int = DEFAULT_SENTENCES,
                  photos: int = DEFAULT_PHOTOS, beta: float = DEFAULT_BETA, weight: float = DEFAULT_WEIGHT,
                  seed: int = 0, dataset: Any = None, bits: int = DEFAULT_BITS) -> dict[str, Any]:
    """Write `model` with a querybank to `out`: `photos` training photos (their region vectors under the model,
    from their CNN features in the store `features`) and `sentences` training sentences of other training
    photos, drawn with `seed`; the photos' region vectors stored in `bits` (8 or 4)."""
    if sentences < 1 or photos < 1:
        raise UsageError("--sentences and --photos need at least 1")
    if beta <= 0 or weight < 0:
        raise UsageError("--beta must be positive and --weight at least 0")
    if bits not in (4, 8):
        raise UsageError(f"--bits {bits}: a bank's vectors are stored in 8 or 4 bits")
    t0 = time.perf_counter()
    loaded = load_align(paths.find_model(str(model)))
    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, loaded.region_config, Path(features), loaded.path)
        bank, available = draw_bank(loaded, ds, store, sentences, photos, beta, weight, seed, features, bits)
    save_align(loaded.model, loaded.vocab, loaded.region_config, out, metrics=dict(loaded.metrics), half=True,
               querybank=bank, top=loaded.top)
    return {"model": str(out), "from": str(loaded.path), **bank.header(), "seed": seed,
            "train_photos_available": available, "seconds": round(time.perf_counter() - t0, 1)}


def draw_bank(loaded: LoadedAlign, ds: Any, store: FeatureStore, sentences: int, photos: int, beta: float,
              weight: float, seed: int = 0, name: str | Path = "features", bits: int = DEFAULT_BITS,
              ) -> tuple[QueryBank, int]:
    """(the bank, how many training photos it was drawn from): `photos` training photos of `ds` in `store` and
    `sentences` sentences of other training photos, shuffled with `seed`. No other split is read. The bank holds
    the photos as their region vectors under the model, as the file will (QueryBank.encoded)."""
    train = [r for r in ds.present("train") if r.image_id in store]
    need = photos + -(-sentences // 5)
    if len(train) < photos + 1:
        raise UsageError(f"{name}: {len(train)} training photos; the bank needs more than --photos {photos}")
    random.Random(seed).shuffle(train)
    bank_photos = retrieval_data(train[:photos], store, loaded.vocab)
    bank_sents = retrieval_data(train[photos:need], store, loaded.vocab)
    k = min(sentences, len(bank_sents.ids))
    bank = QueryBank(beta, weight, bank_sents.ids[:k], bank_sents.lengths[:k], bank_photos.feats,
                     bank_photos.region_mask)
    return bank.encoded(loaded.model, bits), len(train)
