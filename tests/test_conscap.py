"""Constrained beam search puts the constraint words in the caption, and is exact on a small
model (a wide beam equals the exhaustive search over sentences that contain the constraints)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsa_search.captioning import constrained as conscap
from vsa_search.core.config import CaptionConfig
from vsa_search.data.vocab import END, START
from vsa_search.models.beam import beam_search
from vsa_search.models.captioner import Captioner
from vsa_search.vision.concepts import Concepts

V = 8  # <pad> <unk> <start> <end> a b c d
WORDS = (4, 5, 6, 7)


def random_model(seed: int = 0, scale: float = 4.0) -> Captioner:
    torch.manual_seed(seed)
    m = Captioner(CaptionConfig(cell="lstm", feature_dim=8, hidden=16, word_dim=8, dropout=0.0), V)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m.eval()


@torch.no_grad()
def logprob(model: Captioner, feat: torch.Tensor, words: tuple[int, ...]) -> float:
    inputs = torch.tensor([[START, *words]])
    lp = F.log_softmax(model(feat[None], inputs), dim=-1)[0]
    return float(sum(lp[t, w] for t, w in enumerate([*words, END])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_constraint_word_is_in_the_caption_and_the_search_is_exact(seed: int) -> None:
    model = random_model(seed)
    feat = torch.randn(8, generator=torch.Generator().manual_seed(seed))
    plain = beam_search(model, feat[None], beam=3, max_len=3)[0].tokens
    absent = [w for w in WORDS if w not in plain]  # a word the free caption leaves out
    for constraints in ([absent[0]], [absent[0], absent[-1]] if len(absent) > 1 else [absent[0]]):
        cap, met = conscap.constrained_beam(model, feat, constraints, beam=64, max_len=3)
        assert met == (1 << len(constraints)) - 1
        assert all(c in cap.tokens for c in constraints)
        seqs = [s for n in range(1, 4) for s in itertools.product(WORDS, repeat=n) if all(c in s for c in constraints)]
        best = max(seqs, key=lambda s: logprob(model, feat, s))
        assert tuple(cap.tokens) == best
        assert cap.logprob == pytest.approx(logprob(model, feat, best), abs=1e-4)


def test_no_constraint_is_plain_beam_search() -> None:
    model = random_model(3)
    feat = torch.randn(8, generator=torch.Generator().manual_seed(3))
    cap, met = conscap.constrained_beam(model, feat, [], beam=5, max_len=4)
    assert met == 0 and cap.tokens == beam_search(model, feat[None], beam=5, max_len=4)[0].tokens


def test_concepts_become_constraints_and_names() -> None:
    itos = ["<pad>", "<unk>", "<start>", "<end>", "a", "man", "holds", "bear", "pizza", "dog"]
    # Region 0: teddy bear 0.8 -> "bear" ("teddy" is no caption word here), shown as "teddy bear";
    # region 1: "pizza, pizza pie" 0.6 -> "pizza".
    con = Concepts(np.array([[850, 0], [963, 0]], np.uint16), np.array([[0.8, 0.0], [0.6, 0.0]], np.float16))
    cons = conscap.choose_constraints(con, itos, min_confidence=0.5, most=2)
    assert [(c.word, c.name) for c in cons] == [("bear", "teddy bear"), ("pizza", "pizza")]
    assert cons[0].token == itos.index("bear") and cons[0].confidence == pytest.approx(0.8, abs=1e-3)
    assert conscap.choose_constraints(con, itos, min_confidence=0.9) == []
    shown = conscap.render(["a", "man", "holds", "a", "bear"], cons, met=0b11)
    assert shown == "a man holds a teddy bear"
    assert conscap.render(["a", "teddy", "bear"], cons[:1], met=1) == "a teddy bear"  # never "teddy teddy bear"


def test_caption_json_lists_concepts_and_constraints(sample_photos) -> None:
    import json

    from typer.testing import CliRunner

    from vsa_search.cli import app

    res = CliRunner().invoke(app, ["caption", str(sample_photos[0]), "--json", "--concepts", "--beam", "2"])
    assert res.exit_code == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert list(row) == ["photo", "caption", "logprob", "constraints", "concepts"]
    assert row["caption"] and isinstance(row["logprob"], float)
    for c in row["constraints"]:
        assert list(c) == ["word", "name", "confidence", "met"] and c["confidence"] >= conscap.MIN_CONFIDENCE
        if c["met"]:
            assert c["name"] in row["caption"]
    assert 1 <= len(row["concepts"]) <= 5
    for c in row["concepts"]:
        assert list(c) == ["class", "name", "prob", "region", "box"] and 0 <= c["prob"] <= 1 and len(c["box"]) == 4
    plain = CliRunner().invoke(app, ["caption", str(sample_photos[0]), "--json", "--beam", "2"])
    assert list(json.loads(plain.stdout)[0]) == ["photo", "caption", "logprob", "concepts"]
