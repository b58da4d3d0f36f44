"""A fine-tuned CNN top used end to end: the index encodes photos through the very top the model was
trained with (training-time and index-time features agree), the export of a fine-tuning run, feature
stores of a top's features (from photos, or fast from stored maps), training, ensembles and querybanks
that carry the top, and concepts that stay ImageNet's. Tiny presets and the repo's sample photos."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_protocol import _make_root
from tiny_align import TINY, WORDS
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, MAP_PRESETS, top_id
from vsa_search.core.errors import ModelError, StoreError, UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.vocab import SPECIALS, Vocab, pad_ids
from vsa_search.models import checkpoint
from vsa_search.models.alignment import build_model, load_align, save_align
from vsa_search.train import train_embed
from vsa_search.train.ensemble import write_align_ensemble
from vsa_search.train.finetune import TopAlign, export_align, load_top_align, save_top_align
from vsa_search.vision.features import FeatureStore, extract_to_store, require_extractor
from vsa_search.vision.regions import RegionEncoder, prepare_photo
from vsa_search.vision.trunk import CNNTop, MapLower, MapStore, extract_maps, extract_with_top, top_weights, tuned_top

TINY_MAPS = MAP_PRESETS["tiny"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
runner = CliRunner()


def one_error_line(res) -> str:
    assert res.exit_code != 0 and "Traceback" not in res.stderr, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def moved() -> tuple[CNNTop, dict[str, np.ndarray], object]:
    """A top that training has moved (its convolutions perturbed), its weights rounded to float16 as a
    model file keeps them, those weights, and the extractor that names them."""
    torch.manual_seed(0)
    top = CNNTop(TINY_MAPS).eval()
    with torch.no_grad():
        for p in top.parameters():
            if p.dim() == 4:
                p.add_(0.3 * p.std() * torch.randn_like(p))
        for v in top.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
    weights = top_weights(top)
    return top, weights, dataclasses.replace(TINY, top=top_id(weights))


@pytest.fixture(scope="module")
def world(tmp_path_factory, moved, tiny_region_encoder) -> dict[str, Path]:
    """A Flickr8k-format root of the 12 sample photos (6 train, 3 dev, 3 test), their store of ImageNet's
    features, their maps, a fine-tuning run's file (untrained embedding, the moved top) and its export."""
    top, _, _ = moved
    d = tmp_path_factory.mktemp("top")
    root = _make_root(d, sorted(EXAMPLES.glob("*.jpg"))[:12], poisoned=False)
    photos = {r.image_id: r.path for r in load_flickr8k(root).records}
    extract_to_store(photos, d / "frozen", TINY, encoder=tiny_region_encoder)
    extract_maps(photos, d / "maps", TINY_MAPS)
    torch.manual_seed(1)
    vocab = Vocab(list(SPECIALS) + WORDS)
    model = TopAlign(EMBED_PRESETS["tiny"], TINY_MAPS, len(vocab), top=copy.deepcopy(top)).eval()
    save_top_align(model, vocab, TINY, d / "ft.pt", {"best_epoch": 1}, {}, model.state_dict())
    export_align(d / "ft.pt", d / "top.pt")
    return {"dir": d, "root": root, "frozen": d / "frozen", "maps": d / "maps", "ft": d / "ft.pt", "top": d / "top.pt"}


def test_index_time_features_of_a_top_are_its_training_time_features(moved, tiny_region_encoder):
    top, weights, cfg = moved
    enc = RegionEncoder(cfg, "cpu", top=weights)
    rf = enc.encode_photo(EXAMPLES / "horse.jpg")
    lower = MapLower(TINY_MAPS)
    fmap = lower(lower.tensor(rf.photo.image)[None])  # a float32 map, from training's lower stages
    with torch.no_grad():
        want = top.regions(fmap, [torch.from_numpy(rf.boxes).float()]).numpy()
    np.testing.assert_allclose(rf.features, want, rtol=1e-4, atol=1e-4)
    plain = tiny_region_encoder.encode_photo(EXAMPLES / "horse.jpg")
    np.testing.assert_array_equal(rf.boxes, plain.boxes)
    np.testing.assert_allclose(rf.imagenet, plain.features, rtol=1e-5, atol=1e-5)  # ImageNet's, beside them
    assert np.abs(rf.features - plain.features).max() > 0.1  # the top has moved


def _maps_and_boxes(paths: list[Path]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    lower, prepared = MapLower(TINY_MAPS), [prepare_photo(p, TINY) for p in paths]
    maps = lower(torch.stack([lower.tensor(p.image) for p in prepared]))
    return maps, [torch.from_numpy(p.boxes).float() for p in prepared]


def test_the_export_scores_as_the_run_on_its_float16_top(world, moved):
    _, weights, cfg = moved
    loaded = load_align(world["top"])
    assert checkpoint.load(world["top"]).kind == "align" and loaded.region_config == cfg
    assert loaded.top.keys() == weights.keys() and all(np.array_equal(loaded.top[k], weights[k]) for k in weights)
    assert all(v.dtype == torch.float16 for v in checkpoint.load(world["top"]).state_dict.values()
               if v.is_floating_point())
    run = load_top_align(world["ft"])[0]
    with torch.no_grad():
        for v in run.state_dict().values():  # the run as its export keeps it: every weight float16
            if v.is_floating_point():
                v.copy_(v.half().float())
    exported = TopAlign(loaded.config, TINY_MAPS, len(loaded.vocab), top=tuned_top(cfg, loaded.top, TINY_MAPS))
    exported.align = loaded.model
    maps, boxes = _maps_and_boxes(sorted(EXAMPLES.glob("*.jpg"))[:3])
    ids, lengths = pad_ids([loaded.vocab.encode_text(s) for s in ("a dog on the grass", "a man in red")])
    with torch.no_grad():
        assert torch.equal(run(maps, boxes, ids, lengths), exported.eval()(maps, boxes, ids, lengths))


def test_a_model_without_its_tops_weights_is_refused_in_one_line(world, tmp_path):
    ck = checkpoint.load(world["top"])
    bare = {k: v for k, v in ck.state_dict.items() if not k.startswith("cnn.")}
    checkpoint.save(dataclasses.replace(ck, state_dict=bare), tmp_path / "bare.pt")
    other = dict(ck.state_dict)
    k = next(k for k in other if k.startswith("cnn.") and k.endswith("weight"))
    other[k] = other[k] + 1
    checkpoint.save(dataclasses.replace(ck, state_dict=other), tmp_path / "other.pt")
    for name in ("bare", "other"):
        with pytest.raises(ModelError, match="CNN top"):
            load_align(tmp_path / f"{name}.pt")
    line = one_error_line(runner.invoke(app, ["features", "extract", "--model", str(tmp_path / "bare.pt"),
                                              "--out", str(tmp_path / "s"), "--root", str(world["root"])]))
    assert "carries none" in line


def test_imagenet_features_never_pass_for_a_tops(world, tiny_region_encoder, tmp_path):
    loaded = load_align(world["top"])
    with FeatureStore(world["frozen"], readonly=True) as fs, pytest.raises(StoreError, match="extractor"):
        require_extractor(fs.config, loaded.region_config, world["frozen"], loaded.path)
    with pytest.raises(UsageError, match="encoder extracts"):
        ix.build_photos([EXAMPLES], loaded, tmp_path / "idx", encoder=tiny_region_encoder)
    line = one_error_line(runner.invoke(app, ["train", "querybank", "--model", str(world["top"]), "--features",
                                              str(world["frozen"]), "--out", str(tmp_path / "q.pt"),
                                              "--root", str(world["root"])]))
    assert "extractor" in line and not (tmp_path / "q.pt").exists()


def test_an_index_of_a_top_has_its_vectors_and_imagenets_concepts(world, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:3]:
        shutil.copy2(p, photos / p.name)
    loaded = load_align(world["top"])
    save_align(loaded.model, loaded.vocab, TINY, tmp_path / "plain.pt", half=True)  # same weights, ImageNet's CNN
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    for name, model in (("top", world["top"]), ("plain", tmp_path / "plain.pt")):
        r = runner.invoke(app, ["index", "build", str(photos), "--model", str(model), "--index", name, "--json"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["photos"] == 3
    r = runner.invoke(app, ["search", "a dog on the grass", "--index", "top", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["hits"]
    with ix.open_index(tmp_path / "home" / "indexes" / "top") as a, \
            ix.open_index(tmp_path / "home" / "indexes" / "plain") as b:
        assert [x["path"] for x in a.records()] == [x["path"] for x in b.records()]
        assert a.concepts_bytes(range(3)) == b.concepts_bytes(range(3))
        va, vb = a.vectors(range(3)), b.vectors(range(3))
        assert all(x.shape == y.shape and not np.array_equal(x, y) for x, y in zip(va, vb))


def test_features_from_maps_equal_features_from_photos(world, moved, tmp_path):
    _, weights, cfg = moved
    photos = {r.image_id: r.path for r in load_flickr8k(world["root"]).records}
    maps = shutil.copytree(world["maps"], tmp_path / "maps")
    with MapStore(maps) as ms, ms.kv.batch() as b:  # one photo without its map: extracted from its file
        b.delete("m/tr0.jpg")
    fast = extract_with_top(photos, tmp_path / "fast", cfg, weights, maps, world["frozen"])
    assert (fast.extracted, fast.from_maps, fast.already) == (12, 11, 0)
    assert extract_with_top(photos, tmp_path / "fast", cfg, weights, maps, world["frozen"]).already == 12
    slow = extract_with_top(dict(list(photos.items())[:4]), tmp_path / "slow", cfg, weights)
    assert (slow.extracted, slow.from_maps) == (4, 0)
    with FeatureStore(tmp_path / "fast", readonly=True) as f, FeatureStore(tmp_path / "slow", readonly=True) as s, \
            FeatureStore(world["frozen"], readonly=True) as frozen:
        assert f.config == s.config == cfg and top_id(f.top()) == cfg.top
        for i in list(photos)[:4]:
            a, b = f.get(i), s.get(i)
            np.testing.assert_array_equal(a.boxes, b.boxes)
            cos = torch.nn.functional.cosine_similarity(torch.from_numpy(a.features), torch.from_numpy(b.features))
            assert cos.min() > 0.9999  # the float16 of the stored maps
            assert f.concepts_bytes(i) == frozen.concepts_bytes(i) == s.concepts_bytes(i)


def test_training_goes_on_onto_a_tops_features_and_carries_the_top(world, moved, tmp_path):
    _, weights, cfg = moved
    root, ds = world["root"], load_flickr8k(world["root"])
    r = runner.invoke(app, ["features", "extract", "--model", str(world["top"]), "--maps", str(world["maps"]),
                            "--boxes", str(world["frozen"]), "--out", str(tmp_path / "tuned"), "--root", str(root),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["extracted"] == 12 and json.loads(r.stdout)["extractor"] == cfg.extractor_id()
    train_embed(world["frozen"], tmp_path / "init.pt", EMBED_PRESETS["tiny"], dataset=ds, min_count=1, epochs=1)
    r = runner.invoke(app, ["train", "embed", "--features", str(tmp_path / "tuned"), "--init",
                            str(tmp_path / "init.pt"), "--out", str(tmp_path / "on.pt"), "--epochs", "1",
                            "--min-count", "1", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.stderr
    on = load_align(tmp_path / "on.pt")
    assert on.region_config == cfg and top_id(on.top) == cfg.top
    r = runner.invoke(app, ["train", "embed", "--features", str(world["frozen"]), "--init", str(tmp_path / "on.pt"),
                            "--out", str(tmp_path / "back.pt"), "--epochs", "1", "--root", str(root)])
    assert "trained on other features" in one_error_line(r)
    r = runner.invoke(app, ["train", "querybank", "--model", str(tmp_path / "on.pt"), "--features",
                            str(tmp_path / "tuned"), "--out", str(tmp_path / "qb.pt"), "--sentences", "5",
                            "--photos", "2", "--root", str(root)])
    assert r.exit_code == 0, r.stderr
    qb = load_align(tmp_path / "qb.pt")
    assert qb.querybank is not None and top_id(qb.top) == cfg.top


def test_an_ensemble_carries_its_members_top(moved, tmp_path):
    _, weights, cfg = moved
    vocab = Vocab(list(SPECIALS) + WORDS)
    shape = dataclasses.replace(EMBED_PRESETS["tiny"], normalize=True)
    for name, arch in (("base", "hybrid"), ("member", "global")):
        save_align(build_model(dataclasses.replace(shape, arch=arch), len(vocab)).eval(), vocab, cfg,
                   tmp_path / f"{name}.pt", top=weights)
    write_align_ensemble(tmp_path / "base.pt", [tmp_path / "member.pt"], tmp_path / "ens.pt")
    ens = load_align(tmp_path / "ens.pt")
    assert ens.region_config == cfg and top_id(ens.top) == cfg.top


def test_a_top_without_stages_is_one_clear_error(tiny_region_encoder):
    """A damaged top holding the conv head alone: refused as not fitting the backbone (torch and numpy CNNs),
    never a bare ValueError from naming it."""
    from tiny_align import tiny_top

    from vsa_search.vision.cnn import NumpyRegionEncoder

    head = {k: v for k, v in tiny_top().items() if not k.startswith("blocks.")}
    cfg = dataclasses.replace(tiny_region_encoder.cfg, top=top_id(head))
    with pytest.raises(ModelError, match="do not fit"):
        RegionEncoder(cfg, "cpu", top=head)
    with pytest.raises(ModelError, match="do not fit"):
        NumpyRegionEncoder(cfg, top=head)


def test_fine_tuning_goes_on_from_a_model_that_carries_its_top(world, tmp_path) -> None:
    """`train finetune --init` of an exported model (e.g. the shipped align-global.pt) starts from its top, not
    ImageNet's, on the ImageNet store of its boxes; with the top frozen (lr 0) the run keeps that very top.
    It was refused before ("trained on other features")."""
    from vsa_search.train.finetune import train_finetune

    ds = load_flickr8k(world["root"])
    train_finetune(world["frozen"], world["maps"], tmp_path / "again.pt", init=world["top"], top_lr=0.0,
                   dataset=ds, min_count=1, epochs=1)
    model, _, _, _ = load_top_align(tmp_path / "again.pt")
    assert top_id(top_weights(model.top)) == load_align(world["top"]).region_config.top
