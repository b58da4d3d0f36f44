"""vsa-search: Deep Visual-Semantic Alignments (Karpathy & Fei-Fei, CVPR 2015) for your photos.

The library API, in the spirit of openai/CLIP:

    import vsa_search
    from vsa_search import index

    models = vsa_search.load()                       # shipped alignment + caption models
    index.build(["examples/photos"], name="demo")    # incremental: re-running encodes nothing new
    for hit in index.search("a cup of coffee", name="demo", k=3).hits:
        print(hit.key, hit.score, [(m.word, m.box) for m in hit.words])
    found = index.search_floored("a cat", name="demo")      # the relevance floor: P(right) per hit
    print([(h.key, found.probability[id(h)]) for h in found.hits], "held back:", len(found.below))
    index.search("a photo", name="demo", minus=["a cat"])   # photos "a cat" matches fall
    for hit in index.like("examples/photos/horse.jpg", name="demo", k=3).hits:   # photos like a photo
        print(hit.key, hit.score, [(m.query_box, m.box) for m in hit.regions[:3]])
    for c in vsa_search.caption(["examples/photos/coffee.jpg"], beam=3, models=models):
        print(c.photo, c.caption, c.logprob)
    where = vsa_search.MetaFilter.parse(after="2021-01-01", camera="canon")  # EXIF date, camera, --near
    index.search("a dog", name="demo", where=where).filter.no_date   # photos the date filter could not judge
    for g in vsa_search.dupes(name="demo").groups:   # near-duplicates; nothing is deleted
        print(g.keep, [p.path for p in g.photos])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core import paths
from .core.config import DEFAULT_BEAM

if TYPE_CHECKING:
    from .captioning import PhotoCaption
    from .models.alignment import LoadedAlign
    from .models.captioner import LoadedCaptioner

__version__ = "0.1.0"

# torch and the models load on first use, not on `import vsa_search`: the `vsa` command imports
# this package, and `vsa --help` should not wait seconds for torch.
_LAZY = {"PhotoCaption": "captioning", "caption_photos": "captioning", "LoadedAlign": "models.alignment",
         "load_align": "models.alignment", "LoadedCaptioner": "models.captioner", "load_caption": "models.captioner",
         "pick_device": "core.device", "MetaFilter": "index.filters", "DupesResult": "index.dupes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

@dataclass
class Models:
    """Everything needed to search, align and caption: both models, on one device."""

    align: LoadedAlign
    captioner: LoadedCaptioner
    device: Any


def load(align: str | Path = paths.ALIGN_MODEL, caption: str | Path = paths.CAPTION_MODEL,
         device: str | None = None) -> Models:
    """Load the alignment and caption models (names under weights/ or $VSA_HOME/weights, or paths)."""
    from .core.device import pick_device
    from .models.alignment import load_align
    from .models.captioner import load_caption

    dev = pick_device(device)
    return Models(load_align(paths.find_model(str(align)), dev), load_caption(paths.find_model(str(caption)), dev),
                  dev)


def dupes(name: str | Path | None = None, threshold: float | None = None, where: Any = None) -> Any:
    """Near-duplicate groups of photo index `name` (a DupesResult: `.groups`, each with `.keep` and
    `.photos`), as `vsa dupes` finds them; `where`: a MetaFilter limiting the photos compared."""
    from .index import dupes as dp

    return dp.find(name, dp.DEFAULT_THRESHOLD if threshold is None else threshold, where)


def caption(photos: list[str | Path], beam: int = DEFAULT_BEAM, models: Models | None = None) -> list[PhotoCaption]:
    """A caption (with its log-probability) per photo; unreadable photos carry `.error` instead."""
    from .captioning import caption_photos

    models = models or load()
    return caption_photos([Path(p) for p in photos], models.captioner, beam=beam)
