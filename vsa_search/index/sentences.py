"""The sentence index (image -> text): one item per sentence, its known words as fragments."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UsageError
from ..models.alignment import LoadedAlign
from ..models.encode import encode_sentences
from ..models.likelihood import mean_logprobs
from .generation import Item, model_info, write_generation
from .layout import MANIFEST, Location, resolve


def read_sentences(files: list[Path]) -> list[tuple[str, str]]:
    """(source, sentence) pairs: one sentence per line, or Flickr8k captions `name#n<TAB>caption`
    (the source is then `name#n`; otherwise `file:line`)."""
    out: list[tuple[str, str]] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise UsageError(f"{f}: no such file") from None
        except (IsADirectoryError, PermissionError) as e:
            raise UsageError(f"{f}: cannot read ({e.strerror})") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            head, tab, rest = line.partition("\t")
            if tab and "#" in head and head.rsplit("#", 1)[1].isdigit():
                out.append((head, rest.strip()))
            else:
                out.append((f"{f.name}:{n}", line))
    return out


@dataclass
class TextReport:
    index: str
    sentences: int = 0
    words: int = 0
    skipped: int = 0  # empty or all-unknown lines
    duplicates: int = 0
    index_type: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "sentences": self.sentences, "words": self.words, "skipped": self.skipped,
                "duplicates": self.duplicates, "index_type": self.index_type}


def build_sentences(files: list[Path], model: LoadedAlign, name: str | Path | None = None,
                    index_type: str = "auto", on_total: Callable[[int], None] | None = None,
                    on_progress: Callable[[int], None] | None = None, generator: Any = None,
                    on_prior: Callable[[int], None] | None = None) -> TextReport:
    """Replace the sentence index NAME with the sentences of `files`. With a caption `generator` (a
    LoadedCaptioner with prior photos), each sentence also keeps its log P̄(s) (models/likelihood.py), and a
    photo's sentences are then re-ranked by the generator (query.search_image); on_prior(n) as they are done."""
    prior = None if generator is None else generator.require_prior()
    t0 = time.perf_counter()
    location = Location(resolve(name, "sentences"))
    report = TextReport(index=str(location.link))
    pairs = read_sentences(files)
    if not pairs:
        raise UsageError(f"no sentences in {', '.join(str(f) for f in files)}")
    # One item per distinct source; sorted so ids (and the index) do not depend on file order.
    by_source: dict[str, str] = {}
    for src, s in pairs:
        if src in by_source:
            report.duplicates += 1
        by_source.setdefault(src, s)
    keys = sorted(by_source)
    if on_total:
        on_total(len(keys))
    items: list[Item] = []
    for key, (words, vecs, offset) in zip(keys, encode_sentences(model, [by_source[k] for k in keys],
                                                         on_progress=on_progress)):
        if not words:
            report.skipped += 1
            continue
        items.append(Item(key, {"text": by_source[key], "words": words}, vecs.astype(np.float16), offset=offset))
    extra: dict[str, Any] = {"files": [os.path.abspath(f) for f in files]}
    if generator is not None:
        priors = mean_logprobs(generator.model, prior,
                               [generator.vocab.encode_text(it.info["text"]) for it in items], on_progress=on_prior)
        for it, p in zip(items, priors.tolist()):
            it.info["prior"] = round(p, 4)
        extra["generator"] = str(Path(generator.path).resolve())
    with location.lock():
        gen = write_generation(location, "sentences", items, model.model.out_dim, model_info(model), index_type,
                               extra=extra)
    manifest = json.loads((gen / MANIFEST).read_text())
    report.sentences, report.words = manifest["counts"]["sentences"], manifest["counts"]["words"]
    report.index_type = manifest["index_type"]
    report.seconds = time.perf_counter() - t0
    return report
