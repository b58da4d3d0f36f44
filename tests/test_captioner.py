from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS, CaptionConfig
from vsa_search.core.errors import ModelError, UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.vocab import END, PAD, START, build_flickr8k_vocab
from vsa_search.models import checkpoint
from vsa_search.models.captioner import Captioner, load_caption, save_caption
from vsa_search.train.caption import caption_split, train_caption
from vsa_search.vision.features import FeatureStore, extract_to_store

TINY = CAPTION_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path, tiny_region_encoder) -> Path:
    """12 training and 4 dev photos, tiny region preset."""
    ds = load_flickr8k(flickr_root)
    photos = ds.present("train")[:12] + ds.present("dev")[:4]
    out = tmp_path_factory.mktemp("cap") / "store"
    extract_to_store({r.image_id: r.path for r in photos}, out, REGION_PRESETS["tiny"], encoder=tiny_region_encoder)
    return out


@pytest.fixture(scope="module")
def vocab(flickr_root: Path):
    return build_flickr8k_vocab()


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_shapes_and_image_enters_only_at_first_step(cell: str) -> None:
    cfg = dataclasses.replace(TINY, cell=cell, dropout=0.0)
    m = Captioner(cfg, 50).eval()
    feats = torch.randn(3, cfg.feature_dim)
    inputs = torch.tensor([[START, 5, 6, PAD], [START, 7, 8, 9], [START, 4, PAD, PAD]])
    assert m(feats, inputs).shape == (3, 4, 50)
    # Two different images, same words: only the first step's input differs, so with a zeroed
    # W_hh (no memory) the outputs differ at t=0 and agree afterwards.
    with torch.no_grad():
        m.w_hh.weight.zero_()
    two = torch.randn(2, cfg.feature_dim)
    same_words = inputs[1:2].repeat(2, 1)
    if cell == "lstm":  # the LSTM cell remembers through c; check the bias is spent instead
        state = m.init_state(two)
        _, state = m.step(same_words[:, 0], state)
        assert torch.all(state[-1] == 0)
        return
    logits = m(two, same_words)
    assert not torch.allclose(logits[0, 0], logits[1, 0])
    assert torch.allclose(logits[0, 1:], logits[1, 1:])


def test_caption_split_uses_store_photos_of_the_split(tiny_store: Path, vocab) -> None:
    with FeatureStore(tiny_store, readonly=True) as s:
        feats, photo, inputs, targets = caption_split(s, "train", vocab, max_len=20)
        assert len(caption_split(s, "test", vocab, 20)[1]) == 0
    assert feats.shape == (12, 1280) and len(photo) == 60
    assert torch.all(inputs[:, 0] == START)
    n = (targets != PAD).sum(1)
    assert torch.all(targets[torch.arange(len(n)), n - 1] == END)


def test_training_lowers_the_loss_and_saves_a_loadable_model(tiny_store: Path, tmp_path: Path, vocab) -> None:
    cfg = dataclasses.replace(TINY, epochs=4, lr=3e-3)
    rep = train_caption(tiny_store, tmp_path / "m.pt", cfg)
    losses = [h["train_loss"] for h in rep["history"]]
    assert losses[-1] < losses[0] - 0.3, losses
    assert rep["train_photos"] == 12 and rep["dev_photos"] == 4
    loaded = load_caption(tmp_path / "m.pt")
    assert loaded.config == cfg and loaded.vocab == vocab
    assert loaded.region_config == REGION_PRESETS["tiny"]
    assert loaded.metrics["best_epoch"] == rep["best"]["epoch"]


def test_resume_continues_from_the_saved_epoch(tiny_store: Path, tmp_path: Path) -> None:
    two = dataclasses.replace(TINY, epochs=2)
    clean = train_caption(tiny_store, tmp_path / "clean.pt", two)
    train_caption(tiny_store, tmp_path / "r.pt", dataclasses.replace(two, epochs=1))
    assert checkpoint.load(tmp_path / "r.pt").train_state["epoch"] == 1
    resumed = train_caption(tiny_store, tmp_path / "r.pt", two, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(resumed["history"], clean["history"]):  # the same run, interrupted or not
        assert (a["train_loss"], a["dev_ppl"]) == pytest.approx((b["train_loss"], b["dev_ppl"]), rel=1e-5)
    a, b = checkpoint.load(tmp_path / "r.pt"), checkpoint.load(tmp_path / "clean.pt")
    for k in a.state_dict:  # bit for bit: tests/test_resume.py
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    with pytest.raises(UsageError):  # another config is another model
        train_caption(tiny_store, tmp_path / "r.pt", dataclasses.replace(two, hidden=8), resume=True)


def test_slim_file_refuses_resume_and_wrong_kind(tiny_store: Path, tmp_path: Path, vocab) -> None:
    train_caption(tiny_store, tmp_path / "s.pt", dataclasses.replace(TINY, epochs=1), keep_train_state=False)
    slim = checkpoint.load(tmp_path / "s.pt")
    assert "optimizer" not in slim.train_state and slim.state_dict["w_oh.weight"].dtype == torch.float16
    assert next(load_caption(tmp_path / "s.pt").model.parameters()).dtype == torch.float32
    with pytest.raises(ModelError):
        train_caption(tiny_store, tmp_path / "s.pt", TINY, resume=True)
    m = Captioner(CaptionConfig(hidden=8, word_dim=4), len(vocab))
    save_caption(m, vocab, REGION_PRESETS["tiny"], tmp_path / "c.pt")
    ck = checkpoint.load(tmp_path / "c.pt")
    ck.kind = "align"
    checkpoint.save(ck, tmp_path / "a.pt")
    with pytest.raises(ModelError, match="this is an align model; a caption model is needed here"):
        load_caption(tmp_path / "a.pt")


def test_cli_train_caption_and_resume(tiny_store: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from vsa_search.cli import app

    out = tmp_path / "cli.pt"
    args = ["train", "caption", "--features", str(tiny_store), "--out", str(out), "--preset", "tiny", "--json"]
    r = CliRunner().invoke(app, [*args, "--epochs", "1", "--cell", "lstm", "--optimizer", "adam"])
    assert r.exit_code == 0, r.output
    assert [h["epoch"] for h in json.loads(r.stdout)["history"]] == [1]
    r = CliRunner().invoke(app, [*args, "--epochs", "2", "--cell", "lstm", "--optimizer", "adam", "--resume"])
    assert r.exit_code == 0, r.output
    assert [h["epoch"] for h in json.loads(r.stdout)["history"]] == [1, 2]
    r = CliRunner().invoke(app, [*args, "--cell", "gru"])
    assert r.exit_code == 2 and "unknown caption cell" in r.stderr


def test_select_on_dev_cider(tiny_store: Path, tmp_path: Path) -> None:
    rep = train_caption(tiny_store, tmp_path / "c.pt", dataclasses.replace(TINY, epochs=2, select="cider"))
    assert all(0 <= h["dev_cider"] for h in rep["history"])
    best = max(rep["history"], key=lambda h: h["dev_cider"])
    assert rep["best"]["epoch"] == best["epoch"]
    assert load_caption(tmp_path / "c.pt").metrics["dev_cider"] == pytest.approx(best["dev_cider"])
    with pytest.raises(UsageError):
        train_caption(tiny_store, tmp_path / "d.pt", dataclasses.replace(TINY, select="bleu"))
