"""Snippets: the fragments of a data set's sentences on their photos' regions (`vsa align export`),
as JSON lines, and their grouping by region (what the region generator learns from)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_path
from ..core.errors import DatasetError
from ..data.text import tokenize
from ..models.alignment import LoadedAlign
from ..models.encode import unaries
from ..vision.features import require_extractor
from .mrf import DEFAULT_BETA, align_words, check_beta, fragments

# The generator learns from snippets the way it learns from photos: a snippet's "photo" is its region's
# feature, its "sentence" the fragment. Fragments shorter than MIN_SNIPPET_WORDS ("a", "in") are noise.
MIN_SNIPPET_WORDS = 2


def snippets(loaded: LoadedAlign, store: Any, records: list[Any], beta: float = DEFAULT_BETA,
             on_progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every sentence of every record whose photo is in the feature store, aligned to it:
    one dict {image_id, sentence_index, region, box, fragment, score, span} per fragment."""
    beta = check_beta(beta)
    require_extractor(store.config, loaded.region_config, store.path, loaded.path)
    for rec in records:
        if rec.image_id in store:
            regions = store.get(rec.image_id)
            kept = [(k, tokenize(s)) for k, s in enumerate(rec.sentences)]
            kept = [(k, t) for k, t in kept if t]
            us = unaries(loaded, regions.features, [t for _, t in kept]) if kept else []
            for (k, tokens), u in zip(kept, us):
                for f in fragments(tokens, align_words(u, beta), regions.boxes, u):
                    yield {"image_id": rec.image_id, "sentence_index": k, "region": f.region,
                           "box": list(f.box), "fragment": f.text, "score": round(f.score, 5),
                           "span": [f.start, f.end]}
        if on_progress:
            on_progress(1)


def write_jsonl(rows: Iterator[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSON lines atomically (temp file, then rename); returns the row count."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def read_snippets(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such snippets file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def snippet_groups(rows: list[dict[str, Any]], min_words: int = MIN_SNIPPET_WORDS,
                   skip_full_image: bool = False) -> dict[tuple[str, int], list[str]]:
    """(image_id, region) -> its fragments (each at least `min_words` words), in file order."""
    groups: dict[tuple[str, int], list[str]] = {}
    for r in rows:
        if len(r["fragment"].split()) < min_words or (skip_full_image and r["region"] == 0):
            continue
        groups.setdefault((r["image_id"], int(r["region"])), []).append(r["fragment"])
    return groups

