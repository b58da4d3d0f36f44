"""The paper's image-sentence score in one place: S_kl = Σ_t max_i v_i · s_t (Sec. 3.1).

Every path that scores photos against words calls this module: training and evaluation (torch,
padded or flat words), the querybank offsets, an index's search, open-vocabulary search with the
concept bridge inside the max, likeness and image -> text search (numpy, items laid out one after
another). It owns the three pieces each of them needs:

- the word mask: word t of sentence l is real when t < length_l (padding never scores);
- the max over an item's regions, then the sum over words (with `pool="mean"` the model has
  already scaled each s_t by 1/length, so the sum is a mean);
- the hybrid split: a hybrid model's vectors are v_i = [a_i ; u] and s_t = [b_t ; g_t], u the same
  for every region of a photo, so Σ_t max_i v_i·s_t = Σ_t max_i a_i·b_t + u·Σ_t g_t and only the
  leading part needs the max. The trailing `shared` dims are that global part (shared_width).

numpy is imported here; torch only inside the functions that take tensors, so a text search
(numpy only) never loads it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def word_mask(lengths: Any, width: int) -> Any:
    """(L, width) bool: word t of sentence l is a real word (t < lengths[l]), not padding.
    `lengths` (L,) numpy or torch; the mask is of the same kind (and device)."""
    if isinstance(lengths, np.ndarray):
        return np.arange(width)[None, :] < lengths[:, None]
    import torch

    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def split(x: Any, shared: int) -> tuple[Any, Any]:
    """The hybrid split of vectors x (..., h): (own part (..., h - shared), shared part (..., shared))."""
    own = x.shape[-1] - shared
    return x[..., :own], x[..., own:]


def shared_width(model: Any) -> int:
    """Trailing dims of the model's region vectors that are the same for every region of an
    image: a hybrid model's global term; 0 for other models."""
    return int(model.out_dim - model.cfg.hidden) if getattr(model, "glob", None) is not None else 0


# --------------------------------------------------------------------------- numpy: items one after another


def starts_of(counts: Any) -> np.ndarray:
    """Each item's first column when items of `counts` columns are laid out one after another."""
    counts = np.asarray(counts, np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else np.zeros(0, np.int64)


def best_per_item(dots: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each row's max over each item's columns: dots (T, ΣR) laid out item by item (`starts`: each
    item's first column) -> (T, C), each word's best region in each item."""
    if dots.shape[1] == 0 or len(starts) == 0:
        return np.zeros((len(dots), len(starts)), np.float32)
    return np.maximum.reduceat(dots, starts, axis=1)


def item_scores(dots: np.ndarray, starts: np.ndarray,
                shared_dots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """S = Σ_t max_i v_i·s_t of each item from the words' dots with its regions (T, ΣR) laid out item
    by item: (scores (C,), each word's best dot per item (T, C)). With the hybrid split the dots are of
    the own parts only and `shared_dots` (T, C) holds u·g_t of each word and item, added after the max."""
    best = best_per_item(dots, starts)
    if shared_dots is not None:
        best = best + shared_dots
    return best.sum(0), best


def sentence_scores(dots: np.ndarray, word_starts: np.ndarray) -> np.ndarray:
    """The same S_kl with the words laid out one sentence after another and one photo's regions:
    dots (ΣT, R) -> (C,) each sentence's sum over its words of their best region."""
    if len(dots) == 0:
        return np.zeros(0, np.float32)
    return np.add.reduceat(dots.max(1), word_starts)


# --------------------------------------------------------------------------- torch: batches


def score(v: torch.Tensor, region_mask: torch.Tensor, s: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """S_kl = Σ_t max_i v_ki · s_lt for padded batches.
    v (K, R, h), region_mask (K, R) bool, s (L, T, h), word_mask (L, T) bool -> (K, L)."""
    import torch

    dots = torch.einsum("krh,lth->kltr", v, s)  # (K, L, T, R)
    dots = dots.masked_fill(~region_mask[:, None, None, :], float("-inf"))
    best = dots.max(dim=-1).values  # (K, L, T): each word's best region
    return (best * word_mask[None, :, :]).sum(-1)


def mask_regions(dots: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
    """dots with -inf where region_mask (broadcast to dots) says there is no region, so that a max
    over regions never picks padding. Fills `dots` in place and returns it."""
    return dots.masked_fill_(~region_mask, float("-inf"))


def best_region(dots: torch.Tensor, region_mask: torch.Tensor, dim: int) -> torch.Tensor:
    """The max over the region axis `dim` of dots, padding never chosen (mask_regions: in place)."""
    return mask_regions(dots, region_mask).amax(dim=dim)


def sum_words(best: torch.Tensor, word_sentence: torch.Tensor, n_sentences: int) -> torch.Tensor:
    """(K, W) each flat word's best region score -> (K, n_sentences) the sum over each sentence's words."""
    import torch

    return torch.zeros(best.shape[0], n_sentences, dtype=best.dtype, device=best.device).index_add_(
        1, word_sentence, best)


def score_words(v: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor, word_sentence: torch.Tensor,
                n_sentences: int, shared: int = 0, sentence_globals: torch.Tensor | None = None) -> torch.Tensor:
    """score() over sentences given as their real words only (no padding): the same S_kl.
    v (K, R, h), region_mask (K, R) bool, words (W, h) every sentence's word vectors one after
    another, word_sentence (W,) long the sentence of each -> (K, n_sentences). `shared`: the hybrid
    split's width (shared_width); only the leading part needs the max over regions. Callers that
    score the same sentences many times pass them split once (split_words): words (W, h - shared)
    and sentence_globals (n_sentences, shared)."""
    k, r, h = v.shape
    hd = h - shared
    if sentence_globals is None:
        words, sentence_globals = split_words(words, word_sentence, n_sentences, shared)
    # One (K·R, hd) x (hd, W) product, laid out (K, R, W) so that the max runs over a middle axis
    # with no transposed copy of the (K, R, W) tensor.
    dots = (v[..., :hd].reshape(k * r, hd) @ words.T).view(k, r, -1)
    out = sum_words(best_region(dots, region_mask[:, :, None], 1), word_sentence, n_sentences)  # (K, n)
    if shared:
        out = out + v[:, 0, hd:] @ sentence_globals.T
    return out


def split_words(words: torch.Tensor, word_sentence: torch.Tensor, n_sentences: int,
                shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the words' own parts (W, h - shared), contiguous; each sentence's Σ_t g_t (n_sentences, shared))."""
    import torch

    own, glob = split(words, shared)
    g = torch.zeros(n_sentences, shared, dtype=words.dtype, device=words.device).index_add_(0, word_sentence, glob)
    return own.contiguous(), g


def flat_words(s: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded word vectors s (L, T, h) and word_mask (L, T) -> (the real words (W, h), the
    sentence of each (W,)), the form score_words takes."""
    import torch

    sent = torch.arange(len(s), device=s.device)[:, None].expand_as(word_mask)[word_mask]
    return s[word_mask], sent
