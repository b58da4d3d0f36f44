"""Photos to captions with a loaded caption generator: one sentence per photo (`vsa caption`), or
one per region with its box (`vsa caption --regions`, the region generator)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import UsageError, VSAError
from ..models.alignment import LoadedAlign
from ..models.beam import generate_candidates, generate_captions
from ..models.captioner import LoadedCaptioner, photo_input
from ..vision.concepts import from_features, photo_concepts
from ..vision.draw import draw_boxes, save_image
from ..vision.images import PHOTO_KINDS, is_photo
from ..vision.images import load as load_image
from ..vision.regions import RegionEncoder, RegionFeatures
from .constrained import caption_with_concepts
from .rerank import best_candidate, check_reranker, default_weight


@dataclass
class PhotoCaption:
    """One photo's caption, or why it has none (an unreadable photo does not stop the others).
    constraints: the concept words the caption was asked to name (with concepts=True); concepts: the
    photo's top ImageNet concepts (with list_concepts > 0)."""

    photo: Path
    caption: str | None
    logprob: float | None
    error: str | None = None
    constraints: list[dict[str, Any]] | None = None
    concepts: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"photo": str(self.photo), "caption": self.caption,
                             "logprob": None if self.logprob is None else round(self.logprob, 4)}
        if self.error is not None:
            return {**d, "error": self.error}
        if self.constraints is not None:
            d["constraints"] = self.constraints
        if self.concepts is not None:
            d["concepts"] = self.concepts
        return d


def photo_files(photos: list[Path]) -> list[Path]:
    """Photos as given, with folders expanded to the photos directly inside them (sorted)."""
    files: list[Path] = []
    for p in map(Path, photos):
        if p.is_dir():
            inside = sorted(q for q in p.iterdir() if is_photo(q))
            if not inside:
                raise UsageError(f"{p}: no photos ({', '.join(PHOTO_KINDS)}) in this folder")
            files += inside
        else:
            files.append(p)  # a missing or unreadable file is reported per photo, later
    return files


def caption_photos(photos: list[Path], loaded: LoadedCaptioner, beam: int = 7, max_len: int | None = None,
                   length_norm: float = 0.0, encoder=None, on_progress=None, concepts: bool = False,
                   list_concepts: int = 0, rerank_with: LoadedAlign | None = None,
                   rerank_weight: float | None = None) -> list[PhotoCaption]:
    """Beam-search a caption for each photo (folders expanded), in input order. concepts=True lets the
    photo's confident ImageNet concepts into its caption (constrained beam search, `--concepts`);
    list_concepts=N lists each photo's top N concepts beside its caption (`--json`). rerank_with: an
    alignment model that picks among the finished beams (captioning/rerank.py), with `rerank_weight`
    (None: the caption model's own, see rerank.default_weight)."""
    if beam < 1:
        raise UsageError(f"--beam must be at least 1 (got {beam})")
    if rerank_with is not None:
        check_reranker(rerank_with, loaded)
    weight = default_weight(loaded) if rerank_weight is None else rerank_weight
    device = next(loaded.model.parameters()).device
    encoder = encoder or RegionEncoder(loaded.region_config, device)
    results: list[PhotoCaption] = []
    feats, region_feats = [], []
    for p in photo_files(photos):
        try:
            regions = encoder.encode_photo(p)
        except VSAError as e:
            results.append(PhotoCaption(p, None, None, str(e)))
        except Exception as e:  # a photo PIL opens but OpenCV/torch reject must not stop the others
            results.append(PhotoCaption(p, None, None, f"{p}: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
        else:
            r = PhotoCaption(p, None, None)
            con = from_features(regions.features, backbone=loaded.region_config.backbone) \
                if concepts or list_concepts else None
            if list_concepts:
                r.concepts = photo_concepts(con, regions.boxes, list_concepts)
            if concepts:  # one constrained beam per photo: its constraints are its own
                c = caption_with_concepts(loaded, photo_input(regions, loaded.config), con, beam, max_len, length_norm)
                r.caption, r.logprob, r.constraints = c["caption"], c["logprob"], c["constraints"]
            else:
                feats.append(photo_input(regions, loaded.config))
                # the re-ranker scores every region; without it only the full image is kept
                region_feats.append(regions.features if rerank_with is not None else None)
            results.append(r)
        if on_progress:
            on_progress(1)
    cands = generate_candidates(loaded, torch.stack(feats), beam=beam, max_len=max_len, length_norm=length_norm,
                                stop_at_best=rerank_with is None) if feats else []
    caps = [best_candidate(c, loaded.vocab, rerank_with, f, weight) for c, f in zip(cands, region_feats, strict=True)]
    for r, c in zip([r for r in results if r.error is None and r.caption is None], caps, strict=True):
        r.caption = " ".join(loaded.vocab.decode(c.tokens))
        r.logprob = float(c.logprob)
    return results


@dataclass(frozen=True)
class RegionCaption:
    region: int
    box: tuple[int, int, int, int]
    caption: str
    logprob: float  # of the whole caption (END included)
    words: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        d["logprob"] = round(self.logprob, 4)
        return d


def region_captions(loaded: Any, regions: RegionFeatures, beam: int = 7, max_len: int | None = None,
                    top: int | None = None) -> list[RegionCaption]:
    """A caption for every region of a photo (row 0 = the full image) with the region generator.
    top: keep the `top` regions whose captions the model is surest of (mean log-probability per word)."""
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    caps = generate_captions(loaded, torch.from_numpy(np.asarray(regions.features, np.float32)), beam=beam,
                             max_len=max_len)
    out = []
    for i, c in enumerate(caps):
        words = loaded.vocab.decode(c.tokens)
        out.append(RegionCaption(i, tuple(int(x) for x in regions.boxes[i]), " ".join(words),  # type: ignore[arg-type]
                                 float(c.logprob), len(words)))
    if top is not None and top > 0:
        keep = sorted(out, key=lambda r: r.logprob / (r.words + 1), reverse=True)[:top]
        out = sorted(keep, key=lambda r: r.region)
    return out


def draw_region_captions(image: Image.Image, caps: list[RegionCaption]) -> Image.Image:
    return draw_boxes(image, [(c.box, c.caption) for c in caps])


def caption_regions_of(photos: list[Path], loaded: LoadedCaptioner, encoder: RegionEncoder, beam: int = 7,
                       max_len: int | None = None, top: int | None = None,
                       out_png: Path | None = None) -> list[dict[str, Any]]:
    """Region captions of each photo, as {photo, regions: [RegionCaption.to_dict()]}; with `out_png`
    (one photo) the boxes and captions are drawn into it."""
    if out_png is not None and len(photos) != 1:
        raise UsageError(f"--out draws one photo; {len(photos)} were given")
    results = []
    for p in photos:
        caps = region_captions(loaded, encoder.encode_photo(p), beam=beam, max_len=max_len, top=top)
        results.append({"photo": str(p), "regions": [c.to_dict() for c in caps]})
        if out_png is not None:  # the full photo for the picture only; the boxes are in its coordinates
            save_image(draw_region_captions(load_image(p), caps), out_png)
    return results
