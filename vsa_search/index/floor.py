"""The relevance floor of `vsa search TEXT`: a hit's score as the probability that it is a right one
(the calibration `vsa eval calibrate` fits on Flickr8k dev: evaluation/calibrate.py), and the hits
below a floor on it set apart, so that a query the model has little to say about gets "no photo
matches" rather than ten poor hits. The calibration lives beside the model (weights/NAME.calibration.json)
and applies only to that model (its fingerprint); without one there is no floor."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelError, UsageError
from .query import Hit, Result

CALIBRATION_VERSION = 1
SHOWN_BELOW = 3  # hits below the floor still reported ("the best few anyway")


@dataclass(frozen=True)
class Calibration:
    a: float
    b: float
    floor: float  # the default floor on the probability
    model: str  # fingerprint of the model it was fitted for

    def probability(self, scores: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.a * np.asarray(scores, np.float64) + self.b)))


def calibration_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".pt") + ".calibration.json")


def load_calibration(model: Any) -> Calibration | None:
    """The calibration fitted for `model` (a LoadedAlign), or None when there is none for it."""
    path = calibration_path(model.path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable calibration ({e}); write it again with `vsa eval calibrate`") from None
    if doc.get("format_version") != CALIBRATION_VERSION or doc.get("model") != model.fingerprint:
        return None  # fitted for another model (or format): no floor rather than a wrong one
    return Calibration(float(doc["a"]), float(doc["b"]), float(doc["floor"]), doc["model"])


@dataclass
class Floored:
    """Where the floor split a result: its hits now are the ones that passed."""

    result: Result
    floor: float | None  # None: no calibration for this model, nothing held back
    probability: dict[int, float] = field(default_factory=dict)  # id(hit) -> P(right)
    below: list[Hit] = field(default_factory=list)  # the best few of those held back

    @property
    def hits(self) -> list[Hit]:
        return self.result.hits

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON with each hit's probability, the floor and "below_floor"."""
        result = self.result
        d = result.to_dict()
        for h, hd in zip(result.hits, d["hits"]):
            if id(h) in self.probability:
                hd["probability"] = round(self.probability[id(h)], 4)
        d["floor"] = self.floor
        below = Result(result.query, result.words, result.ignored, self.below, 0, 0, False).to_dict()["hits"]
        for h, hd in zip(self.below, below):
            hd["probability"] = round(self.probability[id(h)], 4)
            hd.pop("rank", None)
        d["below_floor"] = below
        return d


def apply_floor(result: Result, cal: Calibration | None, min_score: float | None = None) -> Floored:
    """Keep the hits whose probability reaches `min_score` (default: the calibration's floor; 0 keeps
    all); the best SHOWN_BELOW of the others go to `.below`. Mutates result.hits."""
    if min_score is not None and not 0 <= min_score <= 1:
        raise UsageError(f"--min-score is a probability between 0 and 1 (got {min_score:g})")
    if cal is None:
        if min_score:
            raise UsageError("--min-score needs a calibration for this model: run `vsa eval calibrate`")
        return Floored(result, None)
    floor = cal.floor if min_score is None else float(min_score)
    # A --minus hit is judged on its query's own score: the calibration knows no minus terms.
    probs = cal.probability(np.array([getattr(h, "positive", h.score) for h in result.hits])) \
        if result.hits else np.zeros(0)
    out = Floored(result, floor, {id(h): float(p) for h, p in zip(result.hits, probs)})
    keep = [h for h, p in zip(result.hits, probs) if p >= floor]
    out.below = [h for h, p in zip(result.hits, probs) if p < floor][:SHOWN_BELOW]
    result.hits = keep
    return out
