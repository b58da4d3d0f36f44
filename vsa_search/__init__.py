"""vsa-search: Deep Visual-Semantic Alignments (Karpathy & Fei-Fei, CVPR 2015) for your photos.

The library API, in the spirit of openai/CLIP:

    import vsa_search
    from vsa_search import index

    models = vsa_search.load()                       # shipped alignment + caption models
    index.build(["examples/photos"], name="demo")    # incremental: re-running encodes nothing new
    for hit in index.search("a cup of coffee", name="demo", k=3).hits:
        print(hit.key, hit.score, [(m.word, m.box) for m in hit.words])
    for c in vsa_search.caption(["examples/photos/coffee.jpg"], beam=3, models=models):
        print(c.photo, c.caption, c.logprob)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .captioning import PhotoCaption, caption_photos
from .core import paths
from .core.device import pick_device
from .models.alignment import LoadedAlign, load_align
from .models.captioner import LoadedCaptioner, load_caption

__version__ = "0.1.0"

@dataclass
class Models:
    """Everything needed to search, align and caption: both models, on one device."""

    align: LoadedAlign
    captioner: LoadedCaptioner
    device: Any


def load(align: str | Path = "align", caption: str | Path = "caption", device: str | None = None) -> Models:
    """Load the alignment and caption models (names under models/ or $VSA_HOME/models, or paths)."""
    dev = pick_device(device)
    return Models(load_align(paths.find_model(str(align)), dev), load_caption(paths.find_model(str(caption)), dev),
                  dev)


def caption(photos: list[str | Path], beam: int = 7, models: Models | None = None) -> list[PhotoCaption]:
    """A caption (with its log-probability) per photo; unreadable photos carry `.error` instead."""
    models = models or load()
    return caption_photos([Path(p) for p in photos], models.captioner, beam=beam)
