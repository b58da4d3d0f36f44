"""`vsa eval generator-tune`: choose the weights with which the caption generator re-ranks retrieval
(evaluation/generative.py) on dev. The generator's terms are computed once for the split's top candidates;
each weight then re-ranks them, and each direction takes its best mean Recall@{1,5,10}. The test split is
refused: no test photo or caption reaches the choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core import paths
from ..core.device import pick_device
from ..core.errors import UsageError
from ..data.datasets import load_flickr8k
from ..evaluation.generative import DEPTH, generator_terms, pair_count, reranked
from ..evaluation.metrics import direction_mean, retrieval_metrics
from ..evaluation.recall import StageFn, generator_data, normalised_scores, split_data
from ..models.alignment import load_align

ANNOTATION_WEIGHTS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1)
SEARCH_WEIGHTS: tuple[float, ...] = (0.0, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2)
DIRECTIONS = {"annotation": "image_annotation", "search": "image_search"}


def tune_generator(model: str | Path, features: str | Path, generator: str | Path = paths.CAPTION_MODEL,
                   generator_features: str | Path | None = None, split: str = "dev",
                   annotation_weights: tuple[float, ...] = ANNOTATION_WEIGHTS,
                   search_weights: tuple[float, ...] = SEARCH_WEIGHTS, dataset: Any = None,
                   device: str | None = None, on_stage: StageFn | None = None) -> dict[str, Any]:
    """The table of every weight on the `split` photos (dev; never test) and each direction's pick: the best
    mean R@{1,5,10}, ties to the smaller weight."""
    if split in ("test", "train"):
        raise UsageError(f"choose the generator's weights on dev, never on {split}")
    if not annotation_weights or not search_weights or min(annotation_weights + search_weights) < 0:
        raise UsageError("the grid needs at least one weight a direction, none below 0")
    on_stage = on_stage or (lambda description, total, unit: lambda n: None)
    dev_ = pick_device(device)
    loaded = load_align(paths.find_model(str(model)), dev_)
    ds = dataset if dataset is not None else load_flickr8k()
    data = split_data(loaded, Path(features), ds, split, on_stage("reading features", len(ds.present(split)), "photos"))
    raw, normalised = normalised_scores(loaded, data, dev_, Path(loaded.path).name, on_stage)
    scores = raw if normalised is None else normalised
    cap, inputs, prior = generator_data(generator, None if generator_features is None else Path(generator_features),
                                        data.image_ids, ds, split, dev_, on_stage)
    terms = generator_terms(cap, inputs, prior, data.sentences, scores,
                            on_progress=on_stage(f"generator, {Path(cap.path).name}",
                                                 pair_count(scores, len(prior)), "pairs"))
    table: dict[str, list[dict[str, Any]]] = {}
    for name, weights in (("annotation", annotation_weights), ("search", search_weights)):
        table[name] = []
        for w in weights:
            ann, search = reranked(scores, terms, w, w)
            m = retrieval_metrics(ann if name == "annotation" else search, data.sent_image, reps=0)
            table[name].append({"weight": w, "metrics": m[DIRECTIONS[name]],
                                "mean_recall": direction_mean(m, DIRECTIONS[name])})
    pick = {name: min(rows, key=lambda r: (-round(r["mean_recall"], 6), r["weight"]))["weight"]
            for name, rows in table.items()}
    return {"model": str(loaded.path), "generator": str(cap.path), "dataset": ds.name, "split": split,
            "photos": len(data.image_ids), "sentences": len(data.sentences), "depth": DEPTH, "prior_photos": len(prior),
            "rows": table, "pick": pick,
            "rule": f"each direction's best {split} mean R@{{1,5,10}} (ties: the smaller weight)"}
