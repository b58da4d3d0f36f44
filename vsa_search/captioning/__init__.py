"""Photos to captions with a loaded caption generator: one sentence per photo (`vsa caption`), or
one per region with its box (`vsa caption --regions`, the region generator)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..bridge.scores import photo_concepts
from ..core.config import DEFAULT_BEAM
from ..core.device import one_thread
from ..core.errors import UsageError, VSAError
from ..models import decode_np
from ..models.rerank_np import NumpyAlign
from ..vision.cnn import NumpyRegionEncoder
from ..vision.concepts import Concepts, from_features, from_probs
from ..vision.draw import draw_boxes, save_image
from ..vision.images import PHOTO_KINDS, is_photo
from ..vision.images import load as load_image
from ..vision.regions import RegionEncoder, RegionFeatures
from .rerank import best_candidate, check_reranker, default_length_norm, default_weight, feature_source

if TYPE_CHECKING:  # torch only for torch models: on the CPU `vsa caption` runs numpy ones (load.py)
    from ..models.alignment import LoadedAlign
    from ..models.captioner import LoadedCaptioner


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


def caption_photos(photos: list[Path], loaded: LoadedCaptioner | decode_np.NumpyCaptioner, beam: int = DEFAULT_BEAM,
                   max_len: int | None = None, length_norm: float | None = None, encoder=None, on_progress=None,
                   concepts: bool = False, list_concepts: int = 0,
                   rerank_with: LoadedAlign | NumpyAlign | None = None,
                   rerank_weight: float | None = None) -> list[PhotoCaption]:
    """Beam-search a caption for each photo (folders expanded), in input order. concepts=True lets the
    photo's confident ImageNet concepts into its caption (constrained beam search, `--concepts`, torch
    models only); list_concepts=N lists each photo's top N concepts beside its caption (`--json`).
    rerank_with: an alignment model that picks among the finished beams (captioning/rerank.py), with
    `rerank_weight` (None: the caption model's own, see rerank.default_weight); `length_norm` ranks
    sentences by logprob / (words + 1)^length_norm (None: the caption model's own). `loaded` and the
    re-ranker are torch models or their numpy counterparts (load.py), `encoder` a RegionEncoder or a
    NumpyRegionEncoder (default: the one that fits `loaded`)."""
    if beam < 1:
        raise UsageError(f"--beam must be at least 1 (got {beam})")
    numpy = isinstance(loaded, decode_np.NumpyCaptioner)
    if concepts and numpy:
        raise UsageError("--concepts runs the torch caption model (load it with captioning.load.load_captioning)")
    if rerank_with is not None:
        check_reranker(rerank_with, loaded)
    weight = default_weight(loaded) if rerank_weight is None else rerank_weight
    length_norm = default_length_norm(loaded) if length_norm is None else length_norm
    cfg, top = feature_source(loaded, rerank_with)
    if encoder is None:
        encoder = NumpyRegionEncoder(cfg, top=top) if numpy else \
            RegionEncoder(cfg, next(loaded.model.parameters()).device, top=top)  # type: ignore[union-attr]
    elif rerank_with is not None and encoder.cfg.top != cfg.top:
        raise UsageError(f"{rerank_with.path}: re-ranks features of CNN top {cfg.top or 'of ImageNet'}, but the "
                         f"region encoder computes those of {encoder.cfg.top or 'ImageNet'}")
    # numpy's products here are small (a beam of 7 rows): a team of BLAS threads only spins, and on a busy
    # 2-core machine a cold caption took 9 s instead of 1.2 s
    with one_thread() if numpy else nullcontext():
        return _caption_photos(photos, loaded, beam, max_len, length_norm, encoder, on_progress, concepts,
                               list_concepts, rerank_with, weight)


def _caption_photos(photos: list[Path], loaded: Any, beam: int, max_len: int | None, length_norm: float,
                    encoder: Any, on_progress: Any, concepts: bool, list_concepts: int, rerank_with: Any,
                    weight: float) -> list[PhotoCaption]:
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
            gen = _imagenet(regions)  # what the generator and the concepts read
            con = _concepts(encoder, gen.features, loaded.region_config.backbone) \
                if concepts or list_concepts else None
            if list_concepts:
                r.concepts = photo_concepts(con, regions.boxes, list_concepts)
            if concepts:  # one constrained beam per photo: its constraints are its own
                from ..models.captioner import photo_input
                from .constrained import caption_with_concepts

                c = caption_with_concepts(loaded, photo_input(gen, loaded.config), con, beam, max_len, length_norm)
                r.caption, r.logprob, r.constraints = c["caption"], c["logprob"], c["constraints"]
            else:  # the full image, or every region for a generator that attends (decode_np.photo_input)
                feats.append(decode_np.photo_input(gen, loaded.config))
                # the re-ranker scores every region; without it only the full image is kept
                region_feats.append(regions.features if rerank_with is not None else None)
            results.append(r)
        if on_progress:
            on_progress(1)
    cands = _candidates(loaded, np.stack(feats), beam, max_len, length_norm, rerank_with is None) if feats else []
    caps = [best_candidate(c, loaded.vocab, rerank_with, f, weight) for c, f in zip(cands, region_feats, strict=True)]
    for r, c in zip([r for r in results if r.error is None and r.caption is None], caps, strict=True):
        r.caption = " ".join(loaded.vocab.decode(c.tokens))
        r.logprob = float(c.logprob)
    return results


def _imagenet(regions: RegionFeatures) -> RegionFeatures:
    """A photo's ImageNet features (the generators'), where `regions` holds a fine-tuned top's beside them."""
    if regions.imagenet is None:
        return regions
    return RegionFeatures(regions.boxes, regions.imagenet, regions.photo)


def _concepts(encoder: Any, features: np.ndarray, backbone: str) -> Concepts:
    if isinstance(encoder, NumpyRegionEncoder):  # its own classifier head, in numpy
        return from_probs(encoder.concepts(features))
    return from_features(features, backbone=backbone)


def _candidates(loaded: Any, feats: np.ndarray, beam: int, max_len: int | None, length_norm: float,
                stop_at_best: bool) -> list[list[decode_np.Caption]]:
    """Every finished sentence per photo from (N, D) full-image features (or (N, R, D) region features for
    a generator that attends), with either kind of model."""
    if isinstance(loaded, decode_np.NumpyCaptioner):
        return decode_np.generate_candidates(loaded, feats, beam=beam, max_len=max_len, length_norm=length_norm,
                                             stop_at_best=stop_at_best)
    import torch

    from ..models.beam import generate_candidates

    return generate_candidates(loaded, torch.from_numpy(feats), beam=beam, max_len=max_len, length_norm=length_norm,
                               stop_at_best=stop_at_best)


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


def region_captions(loaded: Any, regions: RegionFeatures, beam: int = DEFAULT_BEAM, max_len: int | None = None,
                    top: int | None = None) -> list[RegionCaption]:
    """A caption for every region of a photo (row 0 = the full image) with the region generator.
    top: keep the `top` regions whose captions the model is surest of (mean log-probability per word)."""
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    import torch

    from ..models.beam import generate_captions

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


def caption_regions_of(photos: list[Path], loaded: LoadedCaptioner, encoder: RegionEncoder, beam: int = DEFAULT_BEAM,
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
