"""Fine-tuning the CNN top: stored lower-stage maps, the top on them, a training run that moves only
the top and the embedding, and its model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_protocol import _make_root
from test_resume import LAYOUT
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, MAP_PRESETS, REGION_PRESETS
from vsa_search.core.errors import StoreError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.models import checkpoint
from vsa_search.train.finetune import load_top_align, train_finetune
from vsa_search.vision.features import FeatureStore, extract_to_store
from vsa_search.vision.regions import load_backbone
from vsa_search.vision.trunk import CNNTop, MapStore, extract_maps

TINY_MAPS = MAP_PRESETS["tiny"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, flickr_root: Path, tiny_region_encoder) -> tuple[Path, Path, Path]:
    """(data-set root, feature store, map store): 6 train, 3 dev, 3 test photos, tiny presets."""
    tmp = tmp_path_factory.mktemp("finetune")
    root = _make_root(tmp, sorted((flickr_root / "images").glob("*.jpg"))[:15], poisoned=False)
    photos = {r.image_id: r.path for r in load_flickr8k(root).records}
    extract_to_store(photos, tmp / "feats", REGION_PRESETS["tiny"], encoder=tiny_region_encoder)
    rep = extract_maps(photos, tmp / "maps", TINY_MAPS)
    assert rep["extracted"] == 12 and not rep["skipped"]
    return root, tmp / "feats", tmp / "maps"


def test_the_top_on_stored_maps_gives_the_feature_stores_features(stores):
    _, feats, maps = stores
    with FeatureStore(feats, readonly=True) as fs, MapStore(maps, readonly=True) as ms:
        ids = fs.ids()[:4]
        m = torch.from_numpy(np.stack([ms.get(i) for i in ids]))
        assert m.dtype == torch.float16 and m.shape == (4, 192, 5, 5)  # 160 px input, cut before the last stage
        ref = [fs.get(i) for i in ids]
        with torch.no_grad():
            got = CNNTop(TINY_MAPS).eval().regions(m, [torch.from_numpy(r.boxes).float() for r in ref])
    want = torch.from_numpy(np.concatenate([r.features for r in ref]))
    assert got.shape == want.shape == (sum(len(r.boxes) for r in ref), 1280)
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999  # float16 maps, float16 store


def test_a_map_store_refuses_another_cut(stores):
    with pytest.raises(StoreError, match="cut"):
        MapStore(stores[2], MAP_PRESETS["default"])


def _top_weights() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in CNNTop(TINY_MAPS, load_backbone(TINY_MAPS.backbone)).state_dict().items()}


@pytest.mark.parametrize("top_lr", [0.0, 1e-3])
def test_training_moves_the_top_only_when_it_has_a_learning_rate(stores, tmp_path, top_lr):
    root, feats, maps = stores
    res = train_finetune(feats, maps, tmp_path / "m.pt", EMBED_PRESETS["tiny"], top_lr=top_lr,
                         dataset=load_flickr8k(root), min_count=1, epochs=1)
    assert res.epoch == 1 and "dev_mean_recall" in res.history[0]
    model, _, _, ck = load_top_align(tmp_path / "m.pt")
    imagenet, trained = _top_weights(), model.top.state_dict()
    assert trained.keys() == imagenet.keys()
    convs = [k for k in imagenet if k.endswith("weight") and imagenet[k].dim() == 4]
    moved = [k for k in convs if not torch.equal(trained[k], imagenet[k])]
    assert moved == (convs if top_lr else [])
    stats = [k for k in imagenet if "running_" in k]
    assert stats and all(torch.equal(trained[k], imagenet[k]) for k in stats)  # BatchNorm stays in eval mode
    assert ck.kind == "align-top" and ck.metrics["top_lr"] == top_lr


class _Killed(Exception):
    pass


def _kill(row: dict) -> None:
    raise _Killed  # after the epoch's file is written, as a kill between epochs


def test_a_killed_run_resumes_to_the_same_weights(stores, tmp_path):
    root, feats, maps = stores
    kw = dict(top_lr=1e-3, dataset=load_flickr8k(root), min_count=1, epochs=2)
    train_finetune(feats, maps, tmp_path / "a.pt", EMBED_PRESETS["tiny"], **kw)
    with pytest.raises(_Killed):
        train_finetune(feats, maps, tmp_path / "b.pt", EMBED_PRESETS["tiny"], on_epoch=_kill, **kw)
    assert load_top_align(tmp_path / "b.pt")[3].train_state["epoch"] == 1
    train_finetune(feats, maps, tmp_path / "b.pt", resume=True, **kw)
    a, b = (load_top_align(tmp_path / f"{n}.pt")[0].state_dict() for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_epochs_equal_one_epoch_resumed_to_two(stores, tmp_path):
    root, feats, maps = stores
    cfg, kw = EMBED_PRESETS["tiny"], dict(top_lr=1e-3, dataset=load_flickr8k(root), min_count=1)
    train_finetune(feats, maps, tmp_path / "two.pt", cfg, epochs=2, **kw)
    train_finetune(feats, maps, tmp_path / "cut.pt", cfg, epochs=1, **kw)
    train_finetune(feats, maps, tmp_path / "cut.pt", resume=True, epochs=2, **{**kw, "top_lr": 0.5})  # the file's
    (_, _, _, a), (_, _, _, b) = (load_top_align(tmp_path / f"{n}.pt") for n in ("two", "cut"))
    assert set(a.train_state) == set(b.train_state) == LAYOUT  # the layout of embed and caption files
    assert a.train_state["epoch"] == b.train_state["epoch"] == 2 and b.metrics["top_lr"] == 1e-3
    for x, y in ((a.state_dict, b.state_dict), (a.train_state["last_weights"], b.train_state["last_weights"])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert [g["lr"] for g in b.train_state["optimizer"]["param_groups"]] == [cfg.lr, 1e-3]  # embedding, top
    sa, sb = a.train_state["optimizer"]["state"], b.train_state["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k])
    ha, hb = ([{k: v for k, v in h.items() if k != "seconds"} for h in c.train_state["history"]] for c in (a, b))
    assert ha == hb and len(ha) == 2


def test_a_file_of_the_older_finetune_layout_resumes_alike(stores, tmp_path):
    """Files written while this trainer kept its own keys (runs in progress then) resume to the same run."""
    root, feats, maps = stores
    cfg, kw = EMBED_PRESETS["tiny"], dict(top_lr=1e-3, dataset=load_flickr8k(root), min_count=1)
    train_finetune(feats, maps, tmp_path / "two.pt", cfg, epochs=2, **kw)
    train_finetune(feats, maps, tmp_path / "old.pt", cfg, epochs=1, **kw)
    ck = load_top_align(tmp_path / "old.pt")[3]
    ts = ck.train_state
    last = ts.pop("last_weights") or ck.state_dict
    for k in ("rng", "seconds", "finished"):
        del ts[k]
    ts.update(best_metric=ts.pop("best_score"), best_dev=ts.pop("best"), last_state_dict=last, top_lr=1e-3)
    checkpoint.save(ck, tmp_path / "old.pt")
    train_finetune(feats, maps, tmp_path / "old.pt", resume=True, epochs=2, **kw)
    a, b = (load_top_align(tmp_path / f"{n}.pt")[3] for n in ("two", "old"))
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.train_state["best_score"] == b.train_state["best_score"]


def test_the_commands_extract_maps_and_fine_tune(stores, tmp_path):
    root, feats, _ = stores
    data = ["--dataset", "flickr8k", "--root", str(root)]
    r = CliRunner().invoke(app, ["features", "maps", "--out", str(tmp_path / "maps"), "--preset", "tiny", "--json",
                                 *data])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["extracted"] == 12
    r = CliRunner().invoke(app, ["train", "finetune", "--features", str(feats), "--maps", str(tmp_path / "maps"),
                                 "--out", str(tmp_path / "m.pt"), "--preset", "tiny", "--min-count", "1",
                                 "--epochs", "1", "--top-lr", "1e-4", "--json", *data])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 1 and load_top_align(tmp_path / "m.pt")[0].map_cfg == TINY_MAPS


def test_fine_tuning_without_a_map_store_says_one_line(stores, tmp_path):
    root, feats, _ = stores
    r = CliRunner().invoke(app, ["train", "finetune", "--features", str(feats), "--maps", str(tmp_path / "none"),
                                 "--out", str(tmp_path / "m.pt"), "--root", str(root)], prog_name="vsa")
    assert r.exit_code != 0 and r.stderr.count("\n") == 1 and "no map store here" in r.stderr, r.stderr
    assert not (tmp_path / "m.pt").exists()
