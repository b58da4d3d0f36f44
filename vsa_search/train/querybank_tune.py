"""`vsa eval querybank-tune`: choose the querybank (models/querybank.py) of an alignment model on dev.
Each candidate bank is drawn from the training split exactly as `vsa train querybank` draws it (same seed),
the dev photos and sentences are scored with it through the recall evaluation (evaluation/recall.py), and
the rule picks the best dev mean Recall@{1,5,10} among the banks that keep the model file within the size
cap. The test split is refused: no test photo or caption reaches the choice."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.device import pick_device
from ..core.errors import UsageError
from ..data.datasets import load_flickr8k
from ..evaluation.metrics import direction_mean, mean_recall, retrieval_metrics
from ..evaluation.recall import querybank_scores, score_all, split_data
from ..models.alignment import load_align, save_align
from ..models.querybank import lse_offsets
from ..vision.features import FeatureStore
from .add_querybank import draw_bank

# What was compared when the shipped bank was chosen (weights/align.md): bank sizes (sentences, photos, and the
# bits of the photos' region vectors, which weigh the most in the file), β 3 and 5, weights 0.5, 0.7 and 1.
SIZES: tuple[tuple[int, int, int], ...] = ((2000, 200, 8), (5000, 200, 8), (5000, 300, 8), (5000, 400, 8),
                                           (5000, 600, 8), (5000, 800, 8), (5000, 1000, 8), (5000, 400, 4),
                                           (5000, 500, 4), (5000, 600, 4), (5000, 800, 4), (5000, 1000, 4))
BETAS: tuple[float, ...] = (3.0, 5.0)
WEIGHTS: tuple[float, ...] = (0.5, 0.7, 1.0)
MAX_MODEL_BYTES = 25_000_000  # a shipped model file stays within 25 MB


def _file_bytes(loaded: Any, bank: Any, tmp: Path) -> int:
    """The size of the model file that `vsa train querybank` would write with this bank."""
    path = save_align(loaded.model, loaded.vocab, loaded.region_config, tmp / "candidate.pt",
                      metrics=dict(loaded.metrics), half=True, querybank=bank, top=loaded.top)
    size = path.stat().st_size
    path.unlink()
    return size


def _pick(rows: list[dict[str, Any]], max_bytes: int) -> dict[str, Any] | None:
    """The best dev mean R@K among rows within the cap; ties go to the smaller file, then the smaller weight."""
    fit = [r for r in rows if r["file_bytes"] <= max_bytes]
    if not fit:
        return None
    return min(fit, key=lambda r: (-round(r["mean_recall"], 6), r["file_bytes"], r["weight"], r["beta"]))


def tune_querybank(model: str | Path, features: str | Path, split: str = "dev",
                   sizes: tuple[tuple[int, int, int], ...] = SIZES, betas: tuple[float, ...] = BETAS,
                   weights: tuple[float, ...] = WEIGHTS, seed: int = 0, max_bytes: int = MAX_MODEL_BYTES,
                   dataset: Any = None, device: str | None = None,
                   on_progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the pick, the table): every bank of `sizes` x `betas` x `weights`, drawn from the training split of
    `dataset` (default Flickr8k) with `seed`, scored on the `split` photos (dev; never test) of the store
    `features` with `model`'s weights (its own bank, if any, is left aside). The pick is None when no bank
    fits `max_bytes`. on_progress(1) after each candidate."""
    if split == "test":
        raise UsageError("choose the querybank on dev, never on test")
    if split == "train":
        raise UsageError("choose the querybank on dev: the bank itself comes from the training split")
    if not sizes or not betas or not weights:
        raise UsageError("the grid needs at least one bank size, β and weight")
    if any(s < 1 or p < 1 for s, p, _ in sizes) or any(b <= 0 for b in betas) or any(w < 0 for w in weights):
        raise UsageError("bank sizes need at least 1, β must be positive and weights at least 0")
    if any(bits not in (4, 8) for _, _, bits in sizes):
        raise UsageError("a bank's vectors are stored in 8 or 4 bits")
    dev_ = pick_device(device)
    loaded = dataclasses.replace(load_align(paths.find_model(str(model)), dev_), querybank=None)
    ds = dataset if dataset is not None else load_flickr8k()
    features = Path(features)
    data = split_data(loaded, features, ds, split)
    with FeatureStore(features, readonly=True) as store:
        drawn = [draw_bank(loaded, ds, store, s, p, betas[0], weights[0], seed, features, bits)
                 for s, p, bits in sizes]
    available = drawn[0][1]
    raw = score_all(loaded.model, data, dev_)
    base = retrieval_metrics(raw, data.sent_image, reps=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bank, _ in drawn:
            size = _file_bytes(loaded, bank, Path(tmp))
            # scored against the bank once; each β and weight is then only its offsets (what S' subtracts)
            photo_bank, bank_sent = querybank_scores(dataclasses.replace(loaded, querybank=bank), data, dev_)
            for beta in betas:
                for w in weights:
                    p_off, s_off = lse_offsets(photo_bank, 1, beta, w), lse_offsets(bank_sent, 0, beta, w)
                    m = retrieval_metrics(raw - p_off[:, None] - s_off[None, :], data.sent_image, reps=0)
                    rows.append({"sentences": int(len(bank.sent_ids)), "photos": int(len(bank.photo_mask)),
                                 "bits": bank.bits, "beta": beta, "weight": w, "file_bytes": size,
                                 "mean_recall": mean_recall(m),
                                 "search_mean": direction_mean(m, "image_search"),
                                 "annotation_mean": direction_mean(m, "image_annotation"), "metrics": m})
                    if on_progress:
                        on_progress(1)
    pick = _pick(rows, max_bytes)
    return pick, {"model": str(loaded.path), "dataset": ds.name, "split": split, "photos": len(data.image_ids),
                  "sentences": len(data.sent_image), "train_photos_available": available, "seed": seed,
                  "max_bytes": max_bytes, "without_querybank": {"mean_recall": mean_recall(base), "metrics": base},
                  "rows": rows, "rule": f"the best {split} mean R@{{1,5,10}} among banks whose model file is "
                                        f"at most {max_bytes:,} bytes (ties: the smaller file, then weight)"}
