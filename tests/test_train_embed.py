"""Training the alignment model on real (tiny) features, resuming it, and evaluating it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.vocab import build_flickr8k_vocab
from vsa_search.models import checkpoint
from vsa_search.models.alignment import load_align
from vsa_search.train.embed import train_embed
from vsa_search.vision.features import extract_to_store

N_TRAIN, N_DEV, N_TEST = 8, 4, 4


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path) -> Path:
    """A few real photos of each split, extracted with the tiny region preset."""
    ds = load_flickr8k(flickr_root)
    recs = ds.present("train")[:N_TRAIN] + ds.present("dev")[:N_DEV] + ds.present("test")[:N_TEST]
    store = tmp_path_factory.mktemp("feats") / "tiny"
    torch.set_num_threads(1)
    report = extract_to_store({r.image_id: r.path for r in recs}, store, REGION_PRESETS["tiny"], device="cpu")
    assert report.extracted == len(recs) and not report.skipped
    return store


@pytest.fixture(scope="session")
def vocab(flickr_root: Path):
    return build_flickr8k_vocab()


def tiny_cfg(**kw):
    return dataclasses.replace(EMBED_PRESETS["tiny"], **kw)


def test_tiny_training_lowers_the_loss(tiny_features: Path, tmp_path: Path, vocab) -> None:
    cfg = tiny_cfg(epochs=6, optimizer="adam", lr=3e-3, dropout=0.0, patience=100)
    r = train_embed(tiny_features, tmp_path / "m.pt", cfg, vocab=vocab, device="cpu")
    losses = [h["loss"] for h in r.history]
    assert len(losses) == 6 and r.epoch == 6
    assert losses[-1] < 0.7 * losses[0], losses
    assert all("dev_mean_recall" in h for h in r.history)  # dev photos present: recall every epoch
    # The file loads with weights_only=True and carries what using it needs.
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["kind"] == "align"
    la = load_align(tmp_path / "m.pt")
    assert la.vocab == vocab and la.region_config == REGION_PRESETS["tiny"] and la.config == cfg
    assert la.metrics["train_photos"] == N_TRAIN and la.metrics["dev_photos"] == N_DEV
    ts = checkpoint.load(tmp_path / "m.pt").train_state
    assert ts["finished"] and ts["optimizer"]  # finished, and --resume --epochs N continues it


def test_resume_continues_from_saved_epoch(tiny_features: Path, tmp_path: Path, vocab) -> None:
    cfg = tiny_cfg(epochs=2, optimizer="adam", lr=3e-3, patience=100)
    out = tmp_path / "m.pt"
    first = train_embed(tiny_features, out, cfg, vocab=vocab, device="cpu")
    assert first.epoch == 2 and [h["epoch"] for h in first.history] == [1, 2]
    seen = []
    more = train_embed(tiny_features, out, resume=True, epochs=4, device="cpu",
                       on_epoch=lambda row: seen.append(row["epoch"]))
    assert seen == [3, 4]  # epochs 1-2 are not run again
    assert [h["epoch"] for h in more.history] == [1, 2, 3, 4]
    assert checkpoint.load(out).train_state["epoch"] == 4


def test_resume_mid_run_restores_optimizer_and_last_weights(tiny_features: Path, tmp_path: Path, vocab) -> None:
    """A run killed after epoch 2 (simulated: the per-epoch file) resumes to the same weights as
    an uninterrupted run."""
    cfg = tiny_cfg(epochs=3, optimizer="adam", lr=3e-3, patience=100, dropout=0.0)
    full = tmp_path / "full.pt"
    cut = tmp_path / "cut.pt"
    saved = {}

    def keep_epoch_2(row):
        if row["epoch"] == 2:
            saved["blob"] = cut.read_bytes()

    train_embed(tiny_features, full, cfg, vocab=vocab, device="cpu")
    train_embed(tiny_features, cut, cfg, vocab=vocab, device="cpu", on_epoch=keep_epoch_2)
    cut.write_bytes(saved["blob"])
    assert checkpoint.load(cut).train_state["optimizer"]  # a mid-run file holds the optimizer
    train_embed(tiny_features, cut, resume=True, device="cpu")
    a, b = checkpoint.load(full), checkpoint.load(cut)
    assert a.train_state["epoch"] == b.train_state["epoch"] == 3
    for k in a.state_dict:
        assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-5), k


def test_cli_train_and_eval_recall_json(tiny_features: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    model = tmp_path / "tiny.pt"
    r = runner.invoke(app, ["train", "embed", "--features", str(tiny_features), "--preset", "tiny",
                            "--out", str(model), "--device", "cpu", "--epochs", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 1
    r = runner.invoke(app, ["eval", "recall", "--model", str(model), "--features", str(tiny_features),
                            "--k", "1,5", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["photos"] == N_TEST and report["sentences"] == 5 * N_TEST
    names = [row["name"] for row in report["rows"]]
    assert names[1] == "global baseline" and names[2] == "chance" and names[3].startswith("paper")
    for row in report["rows"][:2]:
        m = row["metrics"]["image_search"]
        assert 0 <= m["R@1"] <= m["R@5"] <= 100 and len(m["R@1_ci"]) == 2
    # The baseline trained on the fly is cached under $VSA_HOME/cache.
    assert list((tmp_path / "home" / "cache").glob("baseline-*.pt"))


def test_cli_errors_are_one_line(tiny_features: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "recall", "--model", str(tmp_path / "nope.pt"),
                            "--features", str(tiny_features)])
    assert r.exit_code != 0 and "no such model file" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "embed", "--features", str(tiny_features), "--out", str(tmp_path / "x.pt"),
                            "--resume"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_text_pretraining_pulls_paraphrases_together_and_leaves_images_alone(vocab) -> None:
    from vsa_search.models.alignment import build_model
    from vsa_search.train.embed import pretrain_text, text_pairs

    torch.manual_seed(0)
    recs = load_flickr8k().split("train")[:64]  # text only: photos need not be on disk
    groups = text_pairs(recs, vocab)
    assert len(groups) == 64 and all(len(g) >= 2 for g in groups)
    cfg = tiny_cfg(arch="hybrid", normalize=True, pool="mean", word_relu=False, dropout=0.0, text_pretrain=25,
                   text_pretrain_lr=1e-2)
    model = build_model(cfg, len(vocab))
    image_before = {k: v.clone() for k, v in model.state_dict().items() if "image." in k}
    losses = pretrain_text(model, groups, cfg, torch.device("cpu"), batch_size=32)
    assert len(losses) == 25 and losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in image_before.items())


def test_train_embed_with_text_pretraining_records_it(tiny_features: Path, tmp_path: Path, vocab) -> None:
    cfg = tiny_cfg(epochs=1, optimizer="adam", lr=3e-3, text_pretrain=1)
    r = train_embed(tiny_features, tmp_path / "p.pt", cfg, vocab=vocab, device="cpu")
    la = load_align(r.path)
    assert la.config.text_pretrain == 1 and len(la.metrics["text_pretrain_loss"]) == 1


def test_cli_ensemble_adds_global_members(tiny_features: Path, tmp_path: Path, vocab) -> None:
    hyb = train_embed(tiny_features, tmp_path / "h.pt", tiny_cfg(epochs=1, arch="hybrid", normalize=True),
                      vocab=vocab, device="cpu").path
    glob = train_embed(tiny_features, tmp_path / "g.pt", tiny_cfg(epochs=1, arch="global", normalize=True),
                       vocab=vocab, device="cpu").path
    runner = CliRunner()
    r = runner.invoke(app, ["train", "ensemble", "--base", str(hyb), "--member", str(glob), "--member", str(glob),
                            "--out", str(tmp_path / "e.pt"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["global_members"] == 3
    assert load_align(tmp_path / "e.pt").model.out_dim == 4 * EMBED_PRESETS["tiny"].hidden
    r = runner.invoke(app, ["train", "ensemble", "--base", str(glob), "--member", str(hyb),
                            "--out", str(tmp_path / "bad.pt")])
    assert r.exit_code != 0 and "hybrid" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "ensemble-part", "--model", str(tmp_path / "e.pt"), "--part", "2",
                            "--out", str(tmp_path / "p2.pt"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["arch"] == "global", r.output
    r = runner.invoke(app, ["train", "ensemble-part", "--model", str(glob), "--part", "0",
                            "--out", str(tmp_path / "x")], prog_name="vsa")
    assert r.exit_code == 1 and "not an ensemble" in r.stderr and r.stderr.count("\n") == 1, r.output


def test_cli_text_pretraining_options_reach_the_config(tiny_features: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["train", "embed", "--features", str(tiny_features), "--preset", "tiny",
                                 "--out", str(tmp_path / "t.pt"), "--device", "cpu", "--epochs", "1",
                                 "--text-pretrain", "1", "--text-pretrain-lr", "0.01", "--feat-norm", "l2",
                                 "--image-mlp", "8", "--json"])
    assert r.exit_code == 0, r.output
    cfg = load_align(tmp_path / "t.pt").config
    assert (cfg.text_pretrain, cfg.text_pretrain_lr, cfg.feat_norm, cfg.image_mlp) == (1, 0.01, "l2", 8)
