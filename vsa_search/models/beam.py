"""Beam search for the caption generator, batched over images.

Every image keeps up to `beam` open hypotheses. At each step the `beam` best extensions (over all
of an image's open hypotheses x the vocabulary) are taken; those that end in END are finished,
the rest stay open, so the beam narrows as sentences finish (as in the paper's NeuralTalk). With
beam 1 this is exactly greedy decoding. Captions have 1..max_len words: END is barred at the
first step and forced after max_len words. PAD, START and UNK are never generated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..core.config import DEFAULT_BEAM
from ..core.errors import UsageError
from ..data.vocab import END, START
from .captioner import Captioner
from .decode_np import BANNED, Caption, best

__all__ = ["BANNED", "Caption", "beam_candidates", "beam_search", "best", "generate_candidates", "generate_captions",
           "greedy"]


def _step_logprobs(model: Captioner, tokens: torch.Tensor, state, t: int, max_len: int):
    logits, state = model.step(tokens, state)
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    logp[:, list(BANNED)] = float("-inf")
    if t == 0:
        logp[:, END] = float("-inf")  # at least one word
    if t == max_len:
        keep = logp[:, END].clone()  # after max_len words the only move is END
        logp.fill_(float("-inf"))
        logp[:, END] = keep
    return logp, state


@torch.inference_mode()
def greedy(model: Captioner, feats: torch.Tensor, max_len: int = 20) -> list[Caption]:
    """The most likely next word at every step. feats (B, D) -> one Caption per image."""
    model.eval()
    B = feats.shape[0]
    state = model.init_state(feats)
    tokens = torch.full((B,), START, dtype=torch.long, device=feats.device)
    out = [[] for _ in range(B)]
    logprob = [0.0] * B
    done = [False] * B
    for t in range(max_len + 1):
        logp, state = _step_logprobs(model, tokens, state, t, max_len)
        best, tokens = logp.max(dim=-1)  # (B,)
        for b in range(B):
            if done[b]:
                continue
            logprob[b] += float(best[b])
            if int(tokens[b]) == END:
                done[b] = True
            else:
                out[b].append(int(tokens[b]))
        if all(done):
            break
    return [Caption(o, lp, lp) for o, lp in zip(out, logprob)]


def beam_search(model: Captioner, feats: torch.Tensor, beam: int = DEFAULT_BEAM, max_len: int = 20,
                length_norm: float = 0.0) -> list[Caption]:
    """feats (B, D) full-image features (or (B, R, D) region vectors, models/captioner.photo_input) -> the
    best Caption per image.

    length_norm = alpha ranks finished sentences by logprob / (words + 1)^alpha (0: plain
    log-probability, as in the paper)."""
    return [best(f) for f in beam_candidates(model, feats, beam, max_len, length_norm, stop_at_best=True)]


@torch.inference_mode()
def beam_candidates(model: Captioner, feats: torch.Tensor, beam: int = DEFAULT_BEAM, max_len: int = 20,
                    length_norm: float = 0.0, stop_at_best: bool = False) -> list[list[Caption]]:
    """Every sentence the beam finished, per image, in the order they finished (beam_search keeps
    the best; a re-ranker can weigh them otherwise). Each image's search runs until it has no open
    sentence or max_len words; stop_at_best=True (with length_norm 0) stops an image once its best
    finished sentence beats all of its open ones: nothing better can come, so the best is the same
    and the later, worse sentences are left out. Either way an image's sentences depend on its own
    search only, never on which images share the batch."""
    if beam < 1:
        raise UsageError(f"beam size must be >= 1, got {beam}")
    if max_len < 1:
        raise UsageError(f"max length must be >= 1, got {max_len}")
    model.eval()
    B, K, dev = feats.shape[0], beam, feats.device
    state = tuple(s.repeat_interleave(K, dim=0) for s in model.init_state(feats))  # (B*K, ...)
    tokens = torch.full((B * K,), START, dtype=torch.long, device=dev)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one open hypothesis per image to begin with
    history = torch.zeros(B, K, 0, dtype=torch.long, device=dev)  # (B, K, t) words so far
    finished: list[list[Caption]] = [[] for _ in range(B)]

    for t in range(max_len + 1):
        logp, state = _step_logprobs(model, tokens, state, t, max_len)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top, idx = cand.topk(K, dim=-1)  # (B, K)
        parent, word = idx // V, idx % V  # (B, K)
        ended = (word == END) & torch.isfinite(top)
        for b, k in ended.nonzero().tolist():
            words = history[b, parent[b, k]].tolist()
            lp = float(top[b, k])
            finished[b].append(Caption.ranked(words, lp, length_norm))
        # Open hypotheses: the non-END extensions; finished or impossible slots drop to -inf.
        scores = top.masked_fill(ended | ~torch.isfinite(top), float("-inf"))
        history = torch.cat([history.gather(1, parent[:, :, None].expand(-1, -1, history.shape[2])),
                             word[:, :, None]], dim=2)
        flat = (parent + torch.arange(B, device=dev)[:, None] * K).view(-1)  # (B*K,) rows to keep
        state = tuple(s.index_select(0, flat) for s in state)
        tokens = word.view(-1)
        if stop_at_best and length_norm == 0.0:
            # Log-probabilities only fall as sentences grow: an image whose best finished sentence
            # beats all of its open ones is done, and its open ones are dropped (that image alone's).
            best_open = scores.max(dim=1).values.tolist()
            for b, (f, bo) in enumerate(zip(finished, best_open)):
                if f and max(c.score for c in f) >= bo:
                    scores[b] = float("-inf")
        if not torch.isfinite(scores).any():
            break
    return finished


def generate_captions(loaded: Any, feats: torch.Tensor, beam: int = DEFAULT_BEAM, max_len: int | None = None,
                      length_norm: float = 0.0, batch_size: int = 64,
                      on_progress: Callable[[int], None] | None = None) -> list[Caption]:
    """Beam-search captions for (N, D) or (N, R, D) features (photo_input) with a LoadedCaptioner, in batches."""
    return [best(f) for f in generate_candidates(loaded, feats, beam, max_len, length_norm, batch_size, on_progress,
                                                 stop_at_best=True)]


def generate_candidates(loaded: Any, feats: torch.Tensor, beam: int = DEFAULT_BEAM, max_len: int | None = None,
                        length_norm: float = 0.0, batch_size: int = 64,
                        on_progress: Callable[[int], None] | None = None,
                        stop_at_best: bool = False) -> list[list[Caption]]:
    """Every sentence the beam finished for each of (N, D) features (see beam_candidates), in batches;
    stop_at_best=True when only the best of each will be used."""
    device = next(loaded.model.parameters()).device
    out: list[list[Caption]] = []
    for i in range(0, len(feats), batch_size):
        chunk = feats[i:i + batch_size].to(device)
        out += beam_candidates(loaded.model, chunk, beam=beam, max_len=max_len or loaded.config.max_len,
                               length_norm=length_norm, stop_at_best=stop_at_best)
        if on_progress:
            on_progress(len(chunk))
    return out
