"""Calibrated search scores (`vsa eval calibrate`): how likely a hit of `vsa search TEXT` is a right one,
as a function of its score, fitted on a Flickr8k split's sentence -> photo pairs (dev; never test).

Each sentence searches the split's photos exactly as `vsa search` does (the same function, with the
concept bridge and querybank offsets, over an in-memory index of the cached features); its top `k`
hits are labelled right when the hit is the photo the sentence was written for. A Platt fit
P(right | s) = 1 / (1 + exp(-(a s + b))) on those hits maps a score to a probability. The score is
already normalised across queries: the shipped model averages over words (pool "mean") and the
querybank offsets remove each photo's hubness. Flickr8k counts one photo right per sentence, so
another photo that fits just as well counts wrong: the probabilities are lower bounds.

The default floor is the probability at the lowest score that any hit among the split's sentences'
top k reached, right or wrong: a hit below it scores as no caption's hit did, so a query none of whose
hits clear it is one the model has nothing to say about (typically words of no photo at all). It is
set that low because the floor must not hide real matches in a library unlike Flickr8k, where even
right photos score far lower than on dev."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..core.atomic import atomic_path
from ..core.errors import DatasetError, UsageError
from ..data.datasets import load_flickr8k
from ..index.floor import CALIBRATION_VERSION, Calibration, calibration_path
from ..index.openvocab import search_text
from ..models.alignment import LoadedAlign
from ..models.encode import encode_regions, photo_offset
from ..vision.concepts import Concepts
from ..vision.features import FeatureStore, require_extractor

TOP_K = 10  # hits per sentence that are labelled (what a search shows)
BINS = 10  # reliability-plot bins (equal counts)


class SplitIndex:
    """The parts of a flat photo index that search reads, built in memory from cached features (the
    vectors rounded to float16, as an index stores them)."""

    kind = "photos"
    exact = True

    def __init__(self, model: LoadedAlign, store: FeatureStore, image_ids: list[str],
                 on_progress: Callable[[int], None] | None = None):
        vecs, self._boxes, self._concepts, offsets = [], [], [], []
        for i in image_ids:
            f = store.get(i)
            v = encode_regions(model, f.features).astype(np.float16)
            vecs.append(v)
            self._boxes.append(f.boxes[: len(v)])
            self._concepts.append(store.concepts(i).to_bytes())
            offsets.append(photo_offset(model, v.astype(np.float32)))
            if on_progress:
                on_progress(1)
        self.keys = list(image_ids)
        self.count = np.array([len(v) for v in vecs], np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        self.offsets = np.array(offsets, np.float32)
        self._vecs = vecs
        self._xb = np.concatenate(vecs).astype(np.float32)
        self.dim = self._xb.shape[1]
        self.dir = Path(f"/calibration/{id(self)}")  # the concept cache's key: one per instance
        self.location = SimpleNamespace(name="calibration split", link="(memory)")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def fragments(self) -> int:
        return len(self._xb)

    def all_dots(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, np.float32) @ self._xb.T

    def vectors(self, items: Any) -> list[np.ndarray]:
        return [self._vecs[int(i)] for i in items]

    def boxes(self, i: int) -> np.ndarray:
        return self._boxes[i]

    def concepts_bytes(self, items: Any) -> list[bytes | None]:
        return [self._concepts[int(i)] for i in items]

    def concept_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As an index's: every fragment's concept ids (F, K) and probabilities, and which photos have none
        (none here: the feature store holds every photo's)."""
        cs = [Concepts.from_bytes(b) for b in self._concepts]
        k = max(c.ids.shape[1] for c in cs)
        ids, probs = np.zeros((len(self._xb), k), np.uint16), np.zeros((len(self._xb), k), np.float16)
        for c, a, n in zip(cs, self.first, self.count):
            r = min(int(n), len(c))
            ids[a : a + r, : c.ids.shape[1]], probs[a : a + r, : c.ids.shape[1]] = c.ids[:r], c.probs[:r]
        return ids, probs, np.zeros(len(self), bool)

    def record(self, i: int) -> dict[str, Any]:
        return {"key": self.keys[i]}


def labelled_hits(model: LoadedAlign, features: str | Path, split: str = "dev", per_photo: int = 1,
                  k: int = TOP_K, dataset: Any = None,
                  on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(scores (n,), right (n,) bool, sentences, photos) of every sentence's top-k hits over the split's photos."""
    if split == "test":
        raise UsageError("calibration is fitted on dev (or train), never on the test split")
    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, model.region_config, features, model.path)
        records = [r for r in ds.split(split) if r.image_id in store]
        if not records:
            raise DatasetError(f"{features}: holds none of the {split} photos")
        ix = SplitIndex(model, store, [r.image_id for r in records], on_progress)
    scores, right = [], []
    n = 0
    for r in records:
        for sentence in r.sentences[:per_photo]:
            try:
                res = search_text(ix, model, sentence, k)
            except UsageError:  # no word the model or GloVe knows: search would refuse it too
                continue
            n += 1
            scores += [h.score for h in res.hits]
            right += [h.key == r.image_id for h in res.hits]
        if on_progress:
            on_progress(1)
    return np.array(scores, np.float64), np.array(right, bool), n, len(records)


def fit_platt(scores: np.ndarray, right: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Platt's fit (Newton's method on the log-loss, with his smoothed targets): (a, b)."""
    pos, neg = int(right.sum()), int((~right).sum())
    if pos == 0 or neg == 0:
        raise DatasetError("calibration needs both right and wrong hits")
    t = np.where(right, (pos + 1) / (pos + 2), 1 / (neg + 2))
    a, b = 0.0, float(np.log((pos + 1) / (neg + 1)))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * scores + b)))
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([((p - t) * scores).sum(), (p - t).sum()])
        h = np.array([[(w * scores * scores).sum(), (w * scores).sum()], [(w * scores).sum(), w.sum()]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def reliability(prob: np.ndarray, right: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Equal-count bins of predicted probability: mean predicted vs observed share right."""
    order = np.argsort(prob, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append({"predicted": float(prob[part].mean()), "observed": float(right[part].mean()),
                        "hits": int(len(part))})
    return out


def calibrate(model: LoadedAlign, features: str | Path, split: str = "dev", per_photo: int = 1,
              out: str | Path | None = None, plot: str | Path | None = None, dataset: Any = None,
              on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fit, write the calibration beside the model (or to `out`) and, with `plot`, draw its reliability
    plot. Returns what was written, plus the reliability table and where it went."""
    scores, right, n, photos = labelled_hits(model, features, split, per_photo, TOP_K, dataset, on_progress)
    a, b = fit_platt(scores, right)
    cal = Calibration(a, b, 0.0, model.fingerprint)
    prob = cal.probability(scores)
    floor_score = float(scores.min())
    floor = float(cal.probability(np.array([floor_score]))[0])
    table = reliability(prob, right)
    doc = {"format_version": CALIBRATION_VERSION, "model": model.fingerprint, "model_file": Path(model.path).name,
           "method": "platt", "a": a, "b": b, "floor": round(floor, 4), "floor_score": round(floor_score, 4),
           "floor_rule": f"the lowest score of any {split} sentence's top-{TOP_K} hit",
           "fitted_on": {"split": split, "photos": photos, "sentences": n,
                         "hits": int(len(scores)), "right": int(right.sum()), "top_k": TOP_K},
           "metrics": {"brier": round(float(((prob - right) ** 2).mean()), 5),
                       "ece": round(float(sum(r["hits"] * abs(r["predicted"] - r["observed"]) for r in table)
                                          / len(scores)), 5),
                       "share_right": round(float(right.mean()), 4),
                       "max_probability": round(float(prob.max()), 4)},
           "reliability": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in table]}
    path = Path(out) if out is not None else calibration_path(model.path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2) + "\n")
    result = {**doc, "written": str(path)}
    if plot is not None:
        result["plot"] = str(reliability_plot(doc, scores, right, plot))
    return result


def reliability_plot(doc: dict[str, Any], scores: np.ndarray, right: np.ndarray, out: str | Path) -> Path:
    """A PNG: predicted vs observed (the reliability diagram) beside the two score histograms."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("the reliability plot needs matplotlib (pip install -e '.[dev]')") from None
    fig, (left, rightax) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    table = doc["reliability"]
    left.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="perfect")
    left.plot([r["predicted"] for r in table], [r["observed"] for r in table], "o-", color="#1f5fbf",
              label=f"Platt (ECE {doc['metrics']['ece']:.3f})")
    top = max(max(r["predicted"] for r in table), max(r["observed"] for r in table)) * 1.1
    left.set_xlim(0, top)
    left.set_ylim(0, top)
    left.set_xlabel("predicted P(right)")
    left.set_ylabel("observed share right")
    left.axvline(doc["floor"], color="#c03030", lw=1, label=f"default floor {doc['floor']:.3f}")
    left.legend(loc="upper left", fontsize=8)
    f = doc["fitted_on"]
    left.set_title(f"Flickr8k {f['split']}: {f['sentences']:,} sentences, top {f['top_k']} hits each", fontsize=10)
    bins = np.linspace(scores.min(), scores.max(), 40)
    rightax.hist(scores[~right], bins=bins, color="#bbbbbb", label="wrong hits", density=True)
    rightax.hist(scores[right], bins=bins, color="#1f5fbf", alpha=0.6, label="right hits", density=True)
    rightax.axvline(doc["floor_score"], color="#c03030", lw=1, label="floor")
    rightax.set_xlabel("search score")
    rightax.legend(fontsize=8)
    rightax.set_title("score of the hits", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
