"""Retrieval re-ranked by the caption generator (`vsa eval recall --generator`). The alignment score S'
(querybank-normalised) orders every candidate; the generator then re-scores each query's top `depth`:

    search (a sentence s finds photos):      S'(p, s) + w_s · log P(s | p)
    annotation (a photo p finds sentences):  S'(p, s) + w_a · [log P(s | p) - log P̄(s)]

For a photo, sentences differ in how likely they are anyway (short, common ones are likelier for every
photo), so annotation weighs the generator's pointwise mutual information: P̄(s) is the mean of P(s | b)
over a few training photos that travel in the caption model file (`vsa train generator-prior`). For a
sentence, log P̄(s) is the same for every photo and drops out.
Below the top `depth` the alignment order stands. w_a is chosen on dev (`vsa eval generator-tune`); w_s is 0 by
default, as `vsa search` cannot re-rank (models/likelihood.py), and the tune measures what it would give."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..models.captioner import photo_input
from ..models.likelihood import ANNOTATION_WEIGHT, DEPTH, PRIOR_PHOTOS, SEARCH_WEIGHT, mean_logprobs, sentence_logprobs
from .metrics import retrieval_metrics


@dataclass
class GeneratorTerms:
    """Each query's candidates and the generator's term for them: sentences (N, depth) indices of each
    photo's candidate sentences with pmi (N, depth); photos (M, depth) of each sentence's candidate photos
    with logp (M, depth)."""

    sentences: torch.Tensor
    pmi: torch.Tensor
    photos: torch.Tensor
    logp: torch.Tensor


def generator_inputs(captioner: Any, store: Any, image_ids: list[str]) -> torch.Tensor:
    """The generator's inputs (photo_input) of `image_ids` from a FeatureStore of its own features."""
    return torch.stack([photo_input(store.get(i), captioner.config) for i in image_ids])


def prior_photos(train_ids: list[str], n: int = PRIOR_PHOTOS, seed: int = 0) -> list[str]:
    """The training photos P̄(s) averages over: `n` of `train_ids`, drawn with `seed`."""
    ids = sorted(train_ids)
    random.Random(seed).shuffle(ids)
    return ids[:n]


def pair_count(scores: torch.Tensor, prior_photos: int, depth: int = DEPTH, search: bool = True) -> int:
    """How many (photo, sentence) pairs generator_terms has the generator score (for a progress bar)."""
    n, m = scores.shape
    need = len(scores.topk(min(depth, m), dim=1).indices.unique())
    return n * min(depth, m) + need * prior_photos + (m * min(depth, n) if search else 0)


def generator_terms(captioner: Any, inputs: torch.Tensor, prior: torch.Tensor, sentences: list[str],
                    scores: torch.Tensor, depth: int = DEPTH, search: bool = True,
                    on_progress: Callable[[int], None] | None = None) -> GeneratorTerms:
    """The generator's terms for the top `depth` candidates of every query of `scores` (N photos, M
    sentences): inputs (N, ...) the photos' generator inputs, prior (B, ...) the bank's. search=False leaves
    the search direction's terms empty (its order then stands)."""
    tokens = [captioner.vocab.encode_text(s) for s in sentences]
    n, m = scores.shape
    k_s, k_p = min(depth, m), min(depth, n)
    cand_s = scores.topk(k_s, dim=1).indices  # (N, k_s)
    cand_p = scores.topk(k_p, dim=0).indices.T.contiguous()  # (M, k_p)
    model = captioner.model
    ann = sentence_logprobs(model, inputs, torch.arange(n).repeat_interleave(k_s).tolist(),
                            [tokens[j] for j in cand_s.reshape(-1).tolist()], on_progress=on_progress)
    need = sorted(set(cand_s.reshape(-1).tolist()))
    mean = torch.zeros(m)
    mean[torch.tensor(need, dtype=torch.long)] = mean_logprobs(model, prior, [tokens[j] for j in need],
                                                               on_progress=on_progress)
    if not search:
        cand_p = cand_p[:, :0]
    lp = sentence_logprobs(model, inputs, cand_p.reshape(-1).tolist(),
                           [tokens[j] for j in range(m) for _ in range(cand_p.shape[1])], on_progress=on_progress)
    return GeneratorTerms(cand_s, ann.view(n, k_s) - mean[cand_s], cand_p, lp.view(m, cand_p.shape[1]))


def _on_top(scores: torch.Tensor, cand: torch.Tensor, term: torch.Tensor, weight: float) -> torch.Tensor:
    """scores (Q, C) with each query's candidates cand (Q, K) re-scored to score + weight · term and lifted
    above every other candidate, whose order stands."""
    new = scores.gather(1, cand) + weight * term
    lift = float(scores.max() - new.min()) + 1.0
    out = scores - lift
    return out.scatter(1, cand, new)


def reranked(scores: torch.Tensor, terms: GeneratorTerms, annotation_weight: float = ANNOTATION_WEIGHT,
             search_weight: float = SEARCH_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M) scores re-ranked for annotation (rows: photos ranking sentences) and for search (columns)."""
    ann = _on_top(scores, terms.sentences, terms.pmi, annotation_weight)
    if not terms.photos.numel():
        return ann, scores
    search = _on_top(scores.T, terms.photos, terms.logp, search_weight).T
    return ann, search


def reranked_metrics(scores: torch.Tensor, terms: GeneratorTerms, sent_image: torch.Tensor,
                     ks: tuple[int, ...] = (1, 5, 10), annotation_weight: float = ANNOTATION_WEIGHT,
                     search_weight: float = SEARCH_WEIGHT, reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """retrieval_metrics with each direction read from its own re-ranked scores (the same resamples)."""
    ann, search = reranked(scores, terms, annotation_weight, search_weight)
    return {"image_annotation": retrieval_metrics(ann, sent_image, ks, reps, seed)["image_annotation"],
            "image_search": retrieval_metrics(search, sent_image, ks, reps, seed)["image_search"]}
