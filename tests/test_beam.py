from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vsa_search.core.config import CaptionConfig
from vsa_search.core.errors import UsageError
from vsa_search.data.vocab import END, START
from vsa_search.models.beam import beam_search, greedy
from vsa_search.models.captioner import Captioner

V = 7  # <pad> <unk> <start> <end> a b c
WORDS = (4, 5, 6)


def random_model(cell: str = "rnn", seed: int = 0, scale: float = 1.0) -> Captioner:
    torch.manual_seed(seed)
    m = Captioner(CaptionConfig(cell=cell, feature_dim=8, hidden=16, word_dim=8, dropout=0.0), V)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m.eval()


def bigram_model(table: dict[int, dict[int, float]]) -> Captioner:
    """A hand-set multimodal RNN that is a bigram model: x_t is one-hot, h_t = relu(x_t) copies it
    (W_hx = I, W_hh = 0, no image), so y_t = W_oh[:, prev] = log P(next | prev)."""
    m = Captioner(CaptionConfig(cell="rnn", feature_dim=4, hidden=V, word_dim=V, dropout=0.0), V)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.weight.copy_(torch.eye(V))
        m.w_hx.weight.copy_(torch.eye(V))
        logp = torch.full((V, V), -30.0)  # (next, prev)
        for prev, nexts in table.items():
            for nxt, p in nexts.items():
                logp[nxt, prev] = math.log(p)
        m.w_oh.weight.copy_(logp)
    return m.eval()


@torch.no_grad()
def sequence_logprob(model: Captioner, feats: torch.Tensor, words: tuple[int, ...]) -> float:
    """log P(words, END | image) by teacher forcing: the exhaustive search's scorer."""
    inputs = torch.tensor([[START, *words]])
    logp = F.log_softmax(model(feats[None], inputs), dim=-1)[0]  # (T, V)
    return float(sum(logp[t, w] for t, w in enumerate([*words, END])))


def exhaustive(model: Captioner, feats: torch.Tensor, max_len: int) -> tuple[tuple[int, ...], float]:
    seqs = [s for n in range(1, max_len + 1) for s in itertools.product(WORDS, repeat=n)]
    scored = [(s, sequence_logprob(model, feats, s)) for s in seqs]
    return max(scored, key=lambda x: x[1])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_one_is_greedy(cell: str) -> None:
    model = random_model(cell, seed=1, scale=3.0)
    feats = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    g = greedy(model, feats, max_len=6)
    b = beam_search(model, feats, beam=1, max_len=6)
    assert [c.tokens for c in b] == [c.tokens for c in g]
    assert [c.logprob for c in b] == pytest.approx([c.logprob for c in g], abs=1e-5)


def test_hand_set_model_beam_finds_what_greedy_misses() -> None:
    # START -> a (0.55) | b (0.45); a -> c (0.4) | a, b, END (0.2 each); b -> END (0.95); c -> END (0.9).
    # Greedy: "a c" = 0.55 * 0.4 * 0.9 = 0.198. Best: "b" = 0.45 * 0.95 = 0.4275.
    table = {START: {4: 0.55, 5: 0.45}, 4: {6: 0.4, 4: 0.2, 5: 0.2, END: 0.2}, 5: {END: 0.95, 4: 0.05},
             6: {END: 0.9, 4: 0.1}}
    model = bigram_model(table)
    feats = torch.zeros(1, 4)
    best, best_lp = exhaustive(model, feats[0], max_len=3)
    assert best == (5,) and best_lp == pytest.approx(math.log(0.4275), abs=1e-4)
    assert greedy(model, feats, max_len=3)[0].tokens == [4, 6]
    found = beam_search(model, feats, beam=2, max_len=3)[0]
    assert tuple(found.tokens) == best
    assert found.logprob == pytest.approx(best_lp, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_search(seed: int) -> None:
    # 3 words, at most 3 of them: 39 sentences; a beam of 64 never has to drop one, so it is exact.
    model = random_model("rnn", seed=seed, scale=4.0)
    feats = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed))
    found = beam_search(model, feats, beam=64, max_len=3)
    for b in range(3):
        best, best_lp = exhaustive(model, feats[b], max_len=3)
        assert tuple(found[b].tokens) == best
        assert found[b].logprob == pytest.approx(best_lp, abs=1e-4)


def test_max_len_and_length_norm() -> None:
    model = random_model("lstm", seed=3, scale=2.0)
    feats = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    for c in beam_search(model, feats, beam=3, max_len=2):
        assert 1 <= len(c.tokens) <= 2 and all(t in WORDS for t in c.tokens)
    for c in beam_search(model, feats, beam=3, max_len=5, length_norm=1.0):
        assert c.score == pytest.approx(c.logprob / (len(c.tokens) + 1))
    with pytest.raises(UsageError):
        beam_search(model, feats, beam=0)
