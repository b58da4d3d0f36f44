"""Caption ensembles: each step's distribution is the mean of the members' (checked against the members
run by hand), the file round-trips, beam search and re-ranking take it, and what cannot be put together
is refused in one line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS
from vsa_search.core.errors import ModelError, UsageError
from vsa_search.data.vocab import START
from vsa_search.models.beam import beam_search
from vsa_search.models.captioner import (
    CaptionEnsemble,
    Captioner,
    ensemble_captioners,
    load_caption,
    save_caption,
)

TINY = dataclasses.replace(CAPTION_PRESETS["tiny"], cell="lstm", dropout=0.0)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory, caption_vocab) -> list[Path]:
    d = tmp_path_factory.mktemp("ens")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(save_caption(Captioner(TINY, len(caption_vocab)), caption_vocab, REGION_PRESETS["tiny"],
                                d / f"m{seed}.pt"))
    return out


def test_a_step_is_the_mean_of_the_members_distributions(members: list[Path]) -> None:
    a, b = (load_caption(p) for p in members)
    ens = ensemble_captioners([a, b])
    feats = torch.randn(3, TINY.feature_dim, generator=torch.Generator().manual_seed(0))
    tokens = torch.full((3,), START, dtype=torch.long)
    with torch.no_grad():
        got, state = ens.step(tokens, ens.init_state(feats))
        pa = torch.softmax(a.model.step(tokens, a.model.init_state(feats))[0], -1)
        pb = torch.softmax(b.model.step(tokens, b.model.init_state(feats))[0], -1)
    torch.testing.assert_close(got.exp(), (pa + pb) / 2, atol=1e-5, rtol=1e-4)
    assert len(state) == 2 * len(a.model.init_state(feats))
    with pytest.raises(ModelError, match="not trained as one"):
        ens.loss(feats, tokens, tokens)


def test_the_file_round_trips_and_beam_search_takes_it(members: list[Path], tmp_path: Path) -> None:
    a, b = (load_caption(p) for p in members)
    path = save_caption(ensemble_captioners([a, b]), a.vocab, a.region_config, tmp_path / "e.pt",
                        metrics={"rerank_weight": 7.0}, half=True)
    e = load_caption(path)
    assert isinstance(e.model, CaptionEnsemble) and e.config.members == 2 and e.metrics["rerank_weight"] == 7.0
    feats = torch.randn(2, TINY.feature_dim, generator=torch.Generator().manual_seed(1))
    caps = beam_search(e.model, feats, beam=3, max_len=6)
    assert len(caps) == 2 and all(c.tokens and math.isfinite(c.logprob) for c in caps)
    # float16 storage: the members' weights come back to within half precision
    for slot, m in zip(e.model.members, (a, b)):
        for k, v in m.model.state_dict().items():
            torch.testing.assert_close(slot.state_dict()[k], v.half().float())


def test_what_does_not_fit_is_refused(members: list[Path], caption_vocab, tmp_path: Path) -> None:
    a = load_caption(members[0])
    with pytest.raises(UsageError, match="at least 2"):
        ensemble_captioners([a])
    torch.manual_seed(2)
    wide = load_caption(save_caption(Captioner(dataclasses.replace(TINY, hidden=24), len(caption_vocab)),
                                     caption_vocab, REGION_PRESETS["tiny"], tmp_path / "wide.pt"))
    with pytest.raises(UsageError, match="another shape"):
        ensemble_captioners([a, wide])
    r = CliRunner().invoke(app, ["train", "caption-ensemble", "--member", str(members[0]), "--member",
                                 str(tmp_path / "wide.pt"), "--out", str(tmp_path / "x.pt")])
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1 and "another shape" in r.stderr


def test_cli_writes_an_ensemble_that_captions(members: list[Path], sample_photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "ens.pt"
    r = CliRunner().invoke(app, ["train", "caption-ensemble", "--member", str(members[0]), "--member",
                                 str(members[1]), "--out", str(out), "--rerank-weight", "5", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"model": str(out), "members": 2, "rerank_weight": 5.0}
    r = CliRunner().invoke(app, ["caption", str(sample_photos[0]), "--model", str(out), "--beam", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["caption"]
