"""The bridge weight: how much the bridge counts against the model's own word-region score. Read
from a model file (bridge_weight), chosen on a split that is not the test split by a stated rule
(pick_weight, over WEIGHT_GRID; evaluation/openvocab.py measures it), and written back into the
model file (store_weight)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .words import DEFAULT_BRIDGE, BridgeConfig

WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
# The shipped rule: the largest weight within 1.5 points of the best dev mean Recall@K. Recall is flat
# over small weights, and a larger weight lets words outside the vocabulary reach their objects.
SHIPPED_TOLERANCE = 1.5


def bridge_weight(model: Any, cfg: BridgeConfig | None = None) -> float:
    """The weight to use with a loaded alignment `model`: cfg's if given, else the one tuned for this
    model (stored in its file's metrics as "bridge_weight"), else the default."""
    if cfg is not None:
        return cfg.weight
    return float(model.metrics.get("bridge_weight", DEFAULT_BRIDGE.weight)) if model.metrics else DEFAULT_BRIDGE.weight


def pick_weight(mean_recall: dict[float, float], tolerance: float) -> float:
    """The largest weight whose mean Recall@K is within `tolerance` of the best (tolerance 0: the
    best; ties to the smaller weight). Rounded to 6 decimals so that float noise cannot decide."""
    top = max(round(m, 6) for m in mean_recall.values())
    if tolerance == 0:
        return min(w for w, m in mean_recall.items() if round(m, 6) == top)
    return max(w for w, m in mean_recall.items() if round(m, 6) >= top - tolerance)


def store_weight(model_path: str | Path, weight: float, tuned_on: dict[str, Any] | None = None) -> None:
    """Write the tuned bridge weight into the model file's metrics ("bridge_weight"), where search
    and alignment read it (bridge_weight). The weights, hence the model's fingerprint and
    every index built with it, are unchanged."""
    from ..models import checkpoint

    ck = checkpoint.load(model_path, kind="align")
    ck.metrics = {**ck.metrics, "bridge_weight": float(weight), **({"bridge_tuning": tuned_on} if tuned_on else {})}
    checkpoint.save(ck, model_path)
