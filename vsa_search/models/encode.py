"""The vectors a loaded alignment model gives regions and words: region vectors v_i from CNN
features, word vectors s_t of sentences, their dot products (the MRF's unaries), and the query
and sentence-index encodings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..core.errors import ModelError
from ..data.text import tokenize
from ..data.vocab import UNK, pad_ids
from .alignment import LoadedAlign
from .querybank import photo_offsets, sentence_offsets
from .querytext import MAX_QUERY_WORDS, query_tokens_or_fail, query_vectors
from .score import shared_width, split, word_mask

__all__ = ["MAX_QUERY_WORDS", "encode_regions", "encode_sentences", "photo_offset", "query_tokens_or_fail",
           "query_vectors", "region_vectors", "unaries", "word_vectors"]


def _own_part(loaded: LoadedAlign, x: Any) -> Any:
    """The region-word part of vectors x (..., h'). A "hybrid" model appends a global term (the same
    for every region) after it (score.split); alignment ignores it."""
    if getattr(loaded.config, "arch", "brnn") not in ("brnn", "hybrid"):
        raise ModelError(f"{loaded.path}: a {loaded.config.arch} model has no region-word scores to align with")
    return split(x, shared_width(loaded.model))[0]


@torch.inference_mode()
def encode_regions(loaded: LoadedAlign, features: np.ndarray) -> np.ndarray:
    """One photo's (R, D) CNN features -> its (R', h') vectors as a photo index stores them, on the
    model's device: a global model keeps region 0 only, a hybrid one appends its global term."""
    device = next(loaded.model.parameters()).device
    feats = torch.from_numpy(np.asarray(features, np.float32)).to(device)[None]  # (1, R, D)
    return loaded.model.encode_regions(feats)[0].float().cpu().numpy()


@torch.inference_mode()
def photo_offset(loaded: LoadedAlign, vectors: np.ndarray) -> float:
    """A photo's querybank offset from its stored region vectors (R', h'): 0 without a querybank."""
    if loaded.querybank is None:
        return 0.0
    device = next(loaded.model.parameters()).device
    v = torch.from_numpy(np.asarray(vectors, np.float32)).to(device)[None]
    return float(photo_offsets(loaded.model, loaded.querybank, v, torch.ones(v.shape[:2], dtype=torch.bool,
                                                                               device=device))[0])


def region_vectors(loaded: LoadedAlign, features: np.ndarray) -> np.ndarray:
    """(R, D) CNN features -> (R, h) region vectors v_i, the region-word part only (for alignment)."""
    return _own_part(loaded, encode_regions(loaded, features))


@torch.inference_mode()
def word_vectors(loaded: LoadedAlign, token_lists: list[list[str]]) -> list[np.ndarray]:
    """Each sentence's word vectors s_t, (N_k, h); the sentences run through the BRNN as one batch."""
    device = next(loaded.model.parameters()).device
    ids, lengths = pad_ids([loaded.vocab.encode(t) for t in token_lists])  # (B, T), (B,)
    s = _own_part(loaded, loaded.model.encode_words(ids.to(device), lengths.to(device)))  # (B, T, h)
    if getattr(loaded.config, "pool", "sum") == "mean":
        # Undo the model's 1/length scaling: β is in units of one word's v_i · s_t, whatever the length.
        s = s * lengths.to(device, s.dtype)[:, None, None]
    s = s.float().cpu().numpy()
    return [s[k, : len(t)] for k, t in enumerate(token_lists)]


def unaries(loaded: LoadedAlign, features: np.ndarray, token_lists: list[list[str]],
            vectors: np.ndarray | None = None) -> list[np.ndarray]:
    """v_i · s_t of one image's regions against each sentence: a list of (N_k, R) arrays.
    `features` (R, D) are projected once; or pass the region vectors (R, h) themselves."""
    # Stored vectors of a hybrid model carry the global term too.
    v = region_vectors(loaded, features) if vectors is None else _own_part(loaded, np.asarray(vectors, np.float32))
    return [s @ v.T for s in word_vectors(loaded, token_lists)]

def encode_sentences(model: LoadedAlign, sentences: list[str], batch_size: int = 256,
                     on_progress: Callable[[int], None] | None = None
                     ) -> Iterator[tuple[list[str], np.ndarray, float]]:
    """For each sentence: its known words, their vectors (n_known, h) float32 and its querybank
    offset (0 without a querybank). Unknown words still feed the sentence encoder as <unk>
    (context) but are not fragments of their own."""
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i:i + batch_size]
        toks = [tokenize(s) for s in chunk]
        ids = [model.vocab.encode(t) for t in toks]
        batch, lengths = pad_ids(ids, min_length=1)
        with torch.inference_mode():
            st = model.model.encode_words(batch, lengths)  # (B, T, h)
            offsets = [0.0] * len(chunk) if model.querybank is None else sentence_offsets(
                model.model, model.querybank, st, word_mask(lengths, st.shape[1])).tolist()
            s = st.float().cpu().numpy()
        for j, (t, x) in enumerate(zip(toks, ids)):
            keep = [k for k, w in enumerate(x) if w != UNK]
            yield [t[k] for k in keep], s[j, keep], float(offsets[j])
        if on_progress:
            on_progress(len(chunk))
