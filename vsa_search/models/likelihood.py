"""How likely a caption generator finds a given sentence for a photo: log P(s | photo), the sum of the
log-probabilities of its words and END under teacher forcing. It steps the generator through
init_state/step, as beam search does, so one function serves every kind of generator and ensembles.

Retrieval re-ranks with it (evaluation/generative.py, index/query.py): a sentence's candidate photos by
log P(s | p), a photo's candidate sentences by the pointwise mutual information log P(s | p) - log P̄(s),
where P̄(s) is the sentence's mean probability over the prior photos a caption model file carries."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.vocab import END, PAD, START

DEPTH = 30  # candidates re-scored per query: a pair costs the shipped generator ~1.3 ms, batched, on 2 CPU cores
PRIOR_PHOTOS = 40  # training photos P̄(s) averages over, stored in the caption model (`vsa train generator-prior`)
# The generator term's weight beside the alignment score, chosen on the 1,000 dev photos (`vsa eval generator-tune`)
ANNOTATION_WEIGHT = 0.06
# Search is not re-ranked: it would need every candidate photo's generator inputs, which a photo index does not
# keep (25.6 KB a photo); `vsa eval generator-tune` still measures what it would give.
SEARCH_WEIGHT = 0.0


@torch.no_grad()
def sentence_logprobs(model: torch.nn.Module, inputs: torch.Tensor, photo: list[int], tokens: list[list[int]],
                      batch: int = 512, on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N,) log P(tokens[n] END | inputs[photo[n]]) for N (photo, sentence) pairs. inputs: the generator's
    photo inputs (photo_input), one row per photo; tokens: word ids without START or END. Pairs are
    batched by length, so that short sentences are not stepped through long ones' padding."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(tokens)), key=lambda n: len(tokens[n]))
    out = torch.zeros(len(tokens))
    try:
        for a in range(0, len(order), batch):
            rows = order[a : a + batch]
            seqs = [tokens[n] + [END] for n in rows]
            target = torch.full((len(rows), max(map(len, seqs))), PAD, dtype=torch.long)
            for r, s in enumerate(seqs):
                target[r, : len(s)] = torch.tensor(s)
            state = model.init_state(inputs[[photo[n] for n in rows]])
            prev = torch.full((len(rows),), START, dtype=torch.long)
            total = torch.zeros(len(rows))
            for t in range(target.shape[1]):
                logits, state = model.step(prev, state)
                logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, t : t + 1]).squeeze(1)
                total += torch.where(target[:, t] != PAD, logp, torch.zeros_like(logp))
                prev = target[:, t]
            out[rows] = total
            if on_progress:
                on_progress(len(rows))
    finally:
        model.train(was_training)
    return out


def mean_logprobs(model: torch.nn.Module, prior: torch.Tensor, tokens: list[list[int]],
                  on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N,) log P̄(s) = log of the mean over the prior photos' inputs (B, ...) of P(s | b), for N sentences."""
    b = len(prior)
    lp = sentence_logprobs(model, prior, list(range(b)) * len(tokens), [t for t in tokens for _ in range(b)],
                           on_progress=on_progress)
    return torch.logsumexp(lp.view(len(tokens), b), dim=1) - math.log(b)  # pairs run over the photos per sentence
