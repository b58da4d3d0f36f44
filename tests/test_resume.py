"""Resuming training, alike for both models: the model files hold one train-state layout, and a run
of 2 epochs equals a run of 1 epoch resumed to 2, bit for bit (the CLI's --resume)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS
from vsa_search.core.errors import UsageError
from vsa_search.models import checkpoint
from vsa_search.train import train_caption, train_embed

N_TRAIN, N_DEV = 12, 4
LAYOUT = {"epoch", "best_epoch", "best_score", "bad_epochs", "best", "history", "seconds", "finished",
          "optimizer", "last_weights", "rng"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path) -> Path:
    """Random features for a few real Flickr8k photos: resuming is about the loop, not the CNN."""
    from vsa_search.data.datasets import load_flickr8k
    from vsa_search.vision.features import FeatureStore
    from vsa_search.vision.regions import RegionFeatures

    ds = load_flickr8k(flickr_root)
    recs = ds.present("train")[:N_TRAIN] + ds.present("dev")[:N_DEV]
    path = tmp_path_factory.mktemp("resume") / "feats"
    rng = np.random.default_rng(0)
    with FeatureStore(path, cfg=REGION_PRESETS["tiny"]) as fs:
        fs.put((r.image_id, RegionFeatures(np.zeros((4, 4), np.int32), rng.standard_normal((4, 1280), np.float32)))
               for r in recs)
    return path


def _train(kind: str, store: Path, out: Path, *extra: str) -> dict:
    torch.set_num_threads(1)
    r = CliRunner().invoke(app, ["train", kind, "--features", str(store), "--out", str(out), "--preset", "tiny",
                                 "--device", "cpu", "--json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", ["embed", "caption"])
def test_two_epochs_equal_one_epoch_resumed_to_two(kind: str, store: Path, tmp_path: Path) -> None:
    _train(kind, store, tmp_path / "two.pt", "--epochs", "2")
    _train(kind, store, tmp_path / "cut.pt", "--epochs", "1")
    _train(kind, store, tmp_path / "cut.pt", "--epochs", "2", "--resume")
    a, b = checkpoint.load(tmp_path / "two.pt"), checkpoint.load(tmp_path / "cut.pt")
    assert set(a.train_state) == set(b.train_state) == LAYOUT  # the same layout for both models
    assert a.train_state["epoch"] == b.train_state["epoch"] == 2
    _assert_same_tensors(a.state_dict, b.state_dict)  # the best epoch's weights
    _assert_same_tensors(a.train_state["last_weights"], b.train_state["last_weights"])
    ha, hb = ([{k: v for k, v in h.items() if k != "seconds"} for h in c.train_state["history"]] for c in (a, b))
    assert ha == hb and len(ha) == 2
    assert a.train_state["best_score"] == b.train_state["best_score"]
    sa, sb = a.train_state["optimizer"]["state"], b.train_state["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(_same_state(sa[k], sb[k]) for k in sa)


def _same_state(x: dict, y: dict) -> bool:
    return all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)


@pytest.mark.parametrize("kind", ["embed", "caption"])
def test_a_file_of_the_older_layout_resumes_alike(kind: str, store: Path, tmp_path: Path) -> None:
    """Files written while each trainer kept its own keys (runs in progress then) resume to the same run."""
    _train(kind, store, tmp_path / "two.pt", "--epochs", "2")
    _train(kind, store, tmp_path / "old.pt", "--epochs", "1")
    ck = checkpoint.load(tmp_path / "old.pt")
    ts = ck.train_state
    last, best_score = ts.pop("last_weights") or ck.state_dict, ts.pop("best_score")
    del ts["rng"]
    if kind == "embed":
        ts.update(best_metric=best_score, best_dev=ts.pop("best"), last_state_dict=last)
    else:  # the caption files kept the best epoch inside "best" and the score unsaved
        del ts["best_epoch"]
        ts["current"] = last
    checkpoint.save(ck, tmp_path / "old.pt")
    _train(kind, store, tmp_path / "old.pt", "--epochs", "2", "--resume")
    a, b = checkpoint.load(tmp_path / "two.pt"), checkpoint.load(tmp_path / "old.pt")
    _assert_same_tensors(a.state_dict, b.state_dict)
    assert a.train_state["best_score"] == b.train_state["best_score"]


@pytest.mark.parametrize("kind", ["embed", "caption"])
def test_a_slim_file_is_not_resumed(kind: str, store: Path, tmp_path: Path) -> None:
    _train(kind, store, tmp_path / "s.pt", "--epochs", "1", "--slim")
    ts = checkpoint.load(tmp_path / "s.pt").train_state
    assert ts["finished"] and not {"optimizer", "last_weights", "rng"} & set(ts)
    r = CliRunner().invoke(app, ["train", kind, "--features", str(store), "--out", str(tmp_path / "s.pt"),
                                 "--preset", "tiny", "--device", "cpu", "--epochs", "2", "--resume"])
    assert r.exit_code != 0 and "holds no training state to resume" in r.stderr and "--init" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("kind", ["embed", "caption"])
def test_resume_refuses_init(kind: str, store: Path, tmp_path: Path) -> None:
    _train(kind, store, tmp_path / "m.pt", "--epochs", "1")
    train = train_embed if kind == "embed" else partial(train_caption, cfg=CAPTION_PRESETS["tiny"])
    with pytest.raises(UsageError, match="--init starts a new one"):
        train(store, tmp_path / "m.pt", resume=True, init=tmp_path / "m.pt", device="cpu")
