"""Captions re-ranked by the alignment model: of the sentences beam search finished for a photo, keep
the one with the best log P(sentence | photo) / (words + 1)^α + w · S'(photo, sentence), where S' is the
alignment model's score less the sentence's querybank offset (models/querybank.py) and α the length
normalisation the beam ranked by (0: the plain log-probability). The generator alone favours the
sentences it has seen most ("a brown dog is running through the grass"), and the shortest; the alignment
score favours the one that fits this photo, and the offset lowers sentences that fit every photo.
A caption model file names its own w and α (metrics "rerank_weight", "length_norm"), chosen together on dev.

The generators read ImageNet's features; a re-ranker may read those of a CNN top fine-tuned with the
ranking loss (RegionConfig.top) over the same boxes: the caption path then computes both in one CNN pass
(feature_source), the generator reading RegionFeatures.imagenet, the re-ranker RegionFeatures.features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import paths
from ..core.config import RegionConfig
from ..core.errors import UsageError
from ..models.decode_np import Caption, best
from ..models.rerank_np import NumpyAlign
from ..models.rerank_np import load_align as load_numpy_align
from ..vision.features import same_extractor

if TYPE_CHECKING:  # torch only for a torch re-ranker: `vsa caption` on the CPU re-ranks in numpy
    from ..models.alignment import LoadedAlign

DEFAULT_WEIGHT = 20.0  # chosen on the dev split for caption.pt (README, Captions)


def default_weight(captioner: Any) -> float:
    """The re-ranking weight a caption model file asks for (metrics "rerank_weight", chosen on dev for
    it), else DEFAULT_WEIGHT."""
    return float((captioner.metrics or {}).get("rerank_weight", DEFAULT_WEIGHT))


def default_length_norm(captioner: Any) -> float:
    """The length normalisation α a caption model file asks for (metrics "length_norm", chosen on dev with
    its re-ranking weight), else 0: sentences ranked by their plain log-probability."""
    return float((captioner.metrics or {}).get("length_norm", 0.0))


def load_reranker(name: str | None, captioner: Any, device: Any = "cpu",
                  numpy: bool = False) -> LoadedAlign | NumpyAlign | None:
    """The alignment model that re-ranks `captioner`'s beams: `name` (a file or model name; it must use
    the captioner's features, or a fine-tuned top's of them: fits), "none" for none, or None for the
    default: the shipped `align` model when it fits, else none. numpy=True: as a NumpyAlign (no torch)."""
    if name == "none":
        return None
    path = paths.find_model(name or paths.ALIGN_MODEL)
    if name is None and not path.exists():
        return None
    if numpy:
        align: Any = load_numpy_align(path)
    else:
        from ..models.alignment import load_align

        align = load_align(path, device)
    if name is None and not fits(align.region_config, captioner.region_config):
        return None
    check_reranker(align, captioner)
    return align


def fits(align: RegionConfig, captioner: RegionConfig) -> bool:
    """Whether an alignment model of `align`'s features can re-rank a generator of `captioner`'s: the same
    extractor, up to a fine-tuned CNN top of the re-ranker's (the same boxes through one CNN pass)."""
    return same_extractor(align.imagenet(), captioner)


def feature_source(captioner: Any, align: LoadedAlign | NumpyAlign | None) -> tuple[RegionConfig, Any]:
    """(the extractor the caption path runs, the fine-tuned CNN top it needs or None): the re-ranker's, with
    its top, when it has one (its features, and ImageNet's for the generator), else the captioner's."""
    if align is not None and align.region_config.top:
        return align.region_config, align.top
    return captioner.region_config, None


def check_reranker(align: LoadedAlign | NumpyAlign, captioner: Any) -> None:
    """The re-ranker scores the region features the captioner's photos are computed with (fits)."""
    if not fits(align.region_config, captioner.region_config):
        raise UsageError(f"{align.path}: made for other features ({align.region_config.extractor_id()}) than "
                         f"{captioner.path} ({captioner.region_config.extractor_id()}); re-rank with "
                         "an alignment model of the same features, or --rerank none")


def alignment_scores(align: LoadedAlign | NumpyAlign, features: np.ndarray, texts: list[str]) -> np.ndarray:
    """S'(photo, text) for one photo's (R, D) CNN features and each of `texts`."""
    if isinstance(align, NumpyAlign):
        return align.scores(features, texts)
    import torch

    with torch.no_grad():
        return _torch_scores(align, features, texts)


def _torch_scores(align: LoadedAlign, features: np.ndarray, texts: list[str]) -> np.ndarray:
    import torch

    from ..data.vocab import UNK, pad_ids
    from ..models.querybank import sentence_offsets
    from ..models.score import score, word_mask

    model = align.model
    device = next(model.parameters()).device
    ids, lengths = pad_ids([align.vocab.encode_text(t) or [UNK] for t in texts])
    ids, lengths = ids.to(device), lengths.to(device)
    s = model.encode_words(ids, lengths)
    wm = word_mask(lengths, ids.shape[1])
    v = model.encode_regions(torch.from_numpy(np.asarray(features, np.float32)).to(device)[None])
    got = score(v, torch.ones(v.shape[:2], dtype=torch.bool, device=device), s, wm)[0]
    if align.querybank is not None:
        got = got - sentence_offsets(model, align.querybank, s, wm)
    return got.float().cpu().numpy()


def best_candidate(candidates: list[Caption], vocab: Any, align: LoadedAlign | NumpyAlign | None,
                   features: np.ndarray | None,
                   weight: float = DEFAULT_WEIGHT) -> Caption:
    """The candidate with the best score + weight · S'(photo, sentence), its score being what beam search
    ranked it by (logprob / (words + 1)^length_norm); without `align`, the one beam search ranks first."""
    if not candidates:
        raise ValueError("rerank: no candidates")
    if align is None:
        return best(candidates)
    texts = [" ".join(vocab.decode(c.tokens)) for c in candidates]
    s = alignment_scores(align, features, texts)
    return candidates[int(np.argmax([c.score + weight * float(x) for c, x in zip(candidates, s)]))]
