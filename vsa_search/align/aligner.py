"""One sentence aligned to one photo's regions with a loaded alignment model: the MRF of
`align.mrf` over the model's unaries, and the picture of the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..bridge.align import align_unary
from ..core.errors import QueryError, UsageError
from ..data.text import tokenize
from ..models.alignment import LoadedAlign
from ..models.encode import MAX_QUERY_WORDS, encode_regions, unaries
from ..vision.concepts import Concepts, from_features
from ..vision.draw import draw_boxes
from ..vision.regions import RegionEncoder, RegionFeatures
from .mrf import DEFAULT_BETA, Fragment, align_words, check_beta, fragments


@dataclass
class Alignment:
    sentence: str
    tokens: list[str]
    assignment: np.ndarray  # (N,) region per word
    unary: np.ndarray  # (N, R) v_i · s_t
    boxes: np.ndarray  # (R, 4) xyxy, row 0 = full image
    fragments: list[Fragment]
    beta: float

    def to_dict(self) -> dict[str, Any]:
        return {"sentence": self.sentence, "tokens": self.tokens, "beta": self.beta,
                "image_size": [int(self.boxes[0][2]), int(self.boxes[0][3])],
                "regions": [int(i) for i in self.assignment],
                "fragments": [f.to_dict() for f in self.fragments]}


def sentence_tokens(sentence: str) -> list[str]:
    tokens = tokenize(sentence)
    if not tokens:
        raise UsageError("the sentence has no words to align")
    if len(tokens) > MAX_QUERY_WORDS:  # the sentence encoder overflows on longer ones (models.encode)
        raise UsageError(f"the sentence has {len(tokens)} words; at most {MAX_QUERY_WORDS} can be aligned")
    return tokens


def align_vectors(loaded: LoadedAlign, boxes: np.ndarray, vectors: np.ndarray, sentence: str,
                  beta: float = DEFAULT_BETA, concepts: Concepts | None = None) -> Alignment:
    """Align one sentence to region vectors v_i (R, h) already projected by the model (an index's).
    With the regions' `concepts`, words also reach regions through the CNN's classes, and words
    outside the model's vocabulary through them alone (bridge.align_unary)."""
    beta = check_beta(beta)
    tokens = sentence_tokens(sentence)
    if not any(loaded.vocab.known(tokens)):  # as `vsa search` refuses them: nothing would be aligned by meaning
        raise QueryError(f"no known words in the sentence {sentence.strip()!r}: the model's vocabulary has none "
                         f"of {', '.join(tokens)}")
    u = unaries(loaded, np.zeros((0, 0)), [tokens], vectors=vectors)[0]
    if concepts is not None:
        u = align_unary(loaded, tokens, u, concepts)[0]
    a = align_words(u, beta)
    return Alignment(sentence, tokens, a, u, boxes, fragments(tokens, a, boxes, u), beta)


def align_features(loaded: LoadedAlign, regions: RegionFeatures, sentence: str,
                   beta: float = DEFAULT_BETA, bridge: bool = False) -> Alignment:
    """Align one sentence to precomputed region features (CNN features, as the feature store holds);
    bridge=True adds the concept bridge (the regions' classes come from ImageNet's features of the
    same boxes: `regions.imagenet` when the model reads a fine-tuned top's, else the features)."""
    concepts = from_features(regions.imagenet_or_own, backbone=loaded.region_config.backbone) if bridge else None
    return align_vectors(loaded, regions.boxes, encode_regions(loaded, regions.features), sentence, beta, concepts)


def align_photo(loaded: LoadedAlign, photo: str | Path | Image.Image | RegionFeatures, sentence: str,
                beta: float = DEFAULT_BETA, encoder: RegionEncoder | None = None, bridge: bool = False) -> Alignment:
    """Align a sentence to a photo file (its regions proposed and encoded with the model's own
    region config, as an index build does), an image in memory, or region features already computed."""
    check_beta(beta)
    sentence_tokens(sentence)  # fail on an empty sentence before running the CNN
    if isinstance(photo, RegionFeatures):
        regions = photo
    else:
        encoder = encoder or RegionEncoder(loaded.region_config, top=loaded.top)
        regions = encoder.encode_one(photo) if isinstance(photo, Image.Image) else encoder.encode_photo(photo)
    return align_features(loaded, regions, sentence, beta, bridge)


def draw_alignment(image: Image.Image, alignment: Alignment) -> Image.Image:
    """Each fragment's box labelled with its text (fragments on one region share a box)."""
    by_region: dict[int, list[str]] = {}
    for f in alignment.fragments:
        by_region.setdefault(f.region, []).append(f.text)
    labelled = [(tuple(int(x) for x in alignment.boxes[i]), " / ".join(t)) for i, t in by_region.items()]
    return draw_boxes(image, labelled)  # type: ignore[arg-type]

