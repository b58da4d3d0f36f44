"""The region generator: snippets as training pairs, dense captions, and the region evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vsa_search import captioning
from vsa_search.align import snippets
from vsa_search.cli import app
from vsa_search.core.config import CAPTION_PRESETS, EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.vocab import build_flickr8k_vocab
from vsa_search.evaluation import regions
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.models.captioner import Captioner, load_caption, save_caption
from vsa_search.train import caption
from vsa_search.train.caption import caption_split, train_caption
from vsa_search.vision import images
from vsa_search.vision.features import FeatureStore, extract_to_store

TINY = REGION_PRESETS["tiny"]
CAP = dataclasses.replace(CAPTION_PRESETS["tiny"], epochs=1, select="ppl")
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path, tiny_region_encoder) -> dict:
    """A tiny feature store of 3 training and 2 test photos, a tiny alignment model, and the
    snippets of both splits."""
    d = tmp_path_factory.mktemp("regions")
    ds = load_flickr8k(flickr_root)
    train = ds.present("train")[:3]
    test = ds.present("test")[:2]
    extract_to_store({r.image_id: r.path for r in train + test}, d / "store", TINY, encoder=tiny_region_encoder)
    torch.manual_seed(0)
    vocab = build_flickr8k_vocab(flickr_root)
    aligner = load_align(save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, TINY,
                                    d / "align.pt"))
    with FeatureStore(d / "store", readonly=True) as fs:
        snippets.write_jsonl(snippets.snippets(aligner, fs, train, beta=0.0), d / "train.jsonl")
        snippets.write_jsonl(snippets.snippets(aligner, fs, test, beta=0.0), d / "test.jsonl")
    return {"dir": d, "store": d / "store", "vocab": vocab, "train": train, "test": test, "align": d / "align.pt"}


def test_add_snippets_appends_region_pairs(setup: dict) -> None:
    vocab = setup["vocab"]
    with FeatureStore(setup["store"], readonly=True) as fs:
        base = caption_split(fs, "train", vocab, 20)
        merged = caption.add_snippets(base, fs, setup["dir"] / "train.jsonl", vocab, 20)
        groups = snippets.snippet_groups(snippets.read_snippets(setup["dir"] / "train.jsonl"))
        n_snips = sum(len(v) for v in groups.values())
        assert merged[0].shape == (len(base[0]) + len(groups), base[0].shape[1])
        assert len(merged[1]) == len(base[1]) + n_snips == len(merged[2]) == len(merged[3])
        # The first snippet pair: its region's feature, its fragment as START w.. / w.. END.
        (image_id, region), frags = next(iter(groups.items()))
        k = len(base[1])
        assert torch.equal(merged[0][merged[1][k]], torch.from_numpy(fs.get(image_id).features[region]))
        words = vocab.decode(merged[3][k].tolist())
        assert words == [w if w in vocab else "<unk>" for w in frags[0].split()]
        assert all(len(f.split()) >= snippets.MIN_SNIPPET_WORDS for v in groups.values() for f in v)


def test_test_snippets_never_train(setup: dict) -> None:
    with FeatureStore(setup["store"], readonly=True) as fs:
        base = caption_split(fs, "train", setup["vocab"], 20)
        with pytest.raises(UsageError, match="outside the training split"):
            caption.add_snippets(base, fs, setup["dir"] / "test.jsonl", setup["vocab"], 20)


def test_train_region_generator_and_dense_captions(setup: dict, sample_photos: list[Path],
                                                   tiny_region_encoder, tmp_path: Path) -> None:
    # Start from a "full-frame" model, fine-tune on snippets + full-image pairs.
    torch.manual_seed(0)
    full = save_caption(Captioner(CAP, len(setup["vocab"])), setup["vocab"], TINY, tmp_path / "full.pt")
    report = train_caption(setup["store"], tmp_path / "reg.pt", CAP, regions=setup["dir"] / "train.jsonl",
                           init=full, device="cpu")
    assert report["train_sentences"] > 5 * len(setup["train"])  # the snippets joined the sentences
    loaded = load_caption(tmp_path / "reg.pt")
    assert loaded.metrics["regions"].endswith("train.jsonl") and loaded.metrics["init"] == str(full)

    im = images.load(sample_photos[0])
    rf = tiny_region_encoder.encode_photo(sample_photos[0])  # the regions `vsa caption --regions` computes
    caps = captioning.region_captions(loaded, rf, beam=2)
    assert [c.region for c in caps] == list(range(len(rf.boxes)))
    assert all(c.box == tuple(int(v) for v in rf.boxes[c.region]) for c in caps)
    top = captioning.region_captions(loaded, rf, beam=2, top=2)
    assert len(top) == 2 and {c.region for c in top} <= set(range(len(rf.boxes)))

    # vsa caption PHOTO --regions --json --out
    fig = tmp_path / "dense.png"
    res = runner.invoke(app, ["caption", str(sample_photos[0]), "--regions", "--model", str(tmp_path / "reg.pt"),
                              "--beam", "2", "--json", "--out", str(fig)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    w, h = im.size
    regions = doc["photos"][0]["regions"]
    assert len(regions) == len(rf.boxes) and regions[0]["box"] == [0, 0, w, h]
    for r in regions:
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and isinstance(r["caption"], str)
    assert fig.stat().st_size > 0


def test_init_must_fit(setup: dict, tmp_path: Path) -> None:
    other = dataclasses.replace(CAP, hidden=24)
    bad = save_caption(Captioner(other, len(setup["vocab"])), setup["vocab"], TINY, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="another shape"):
        train_caption(setup["store"], tmp_path / "x.pt", CAP, init=bad, device="cpu")


def test_a_resumed_region_generator_keeps_its_snippets(setup: dict, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CAP, epochs=1)
    first = train_caption(setup["store"], tmp_path / "r.pt", cfg, regions=setup["dir"] / "train.jsonl", device="cpu")
    again = train_caption(setup["store"], tmp_path / "r.pt", dataclasses.replace(cfg, epochs=2), resume=True,
                          device="cpu")  # no --regions: the saved ones
    assert again["train_sentences"] == first["train_sentences"] > 5 * len(setup["train"])
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    with pytest.raises(UsageError, match="was trained with --regions"):
        train_caption(setup["store"], tmp_path / "r.pt", dataclasses.replace(cfg, epochs=3), resume=True,
                      regions=setup["dir"] / "test.jsonl", device="cpu")


def test_region_evaluation_table(setup: dict, tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = save_caption(Captioner(CAP, len(setup["vocab"])), setup["vocab"], TINY, tmp_path / "m.pt")
    res = regions.evaluate_regions(m, m, setup["store"], snippets_path=setup["dir"] / "test.jsonl", beam=2,
                                 device="cpu")
    assert res["photos"] == len(setup["test"]) and res["regions"] > 0
    assert list(res["rows"]) == ["full-frame model, RoI feature", "full-frame model, crop as a photo",
                                 "region model, RoI feature", "region model, crop as a photo"]
    # The same weights on the same inputs: the two "models" must score the same.
    assert res["rows"]["full-frame model, RoI feature"]["CIDEr"] == res["rows"]["region model, RoI feature"]["CIDEr"]
    for row in res["rows"].values():
        assert 0 <= row["BLEU-1"] <= 100 and row["CIDEr"] >= 0
    assert all(e["region"].split("#")[1] != "0" for e in res["examples"])  # regions, never the full image
    # Aligning the held-out sentences in the same run gives the same table as the exported file.
    again = regions.evaluate_regions(m, m, setup["store"], align_model=setup["align"], beta=0.0, beam=2, device="cpu")
    assert again["rows"] == res["rows"]
    with pytest.raises(UsageError, match="outside the test split"):
        regions.evaluate_regions(m, m, setup["store"], snippets_path=setup["dir"] / "train.jsonl", beam=2)


def test_region_flags_need_regions(sample_photos: list[Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["caption", str(sample_photos[0]), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--regions" in res.stderr and res.stdout == ""


def test_eval_regions_cli(setup: dict, tmp_path: Path) -> None:
    torch.manual_seed(2)
    m = str(save_caption(Captioner(CAP, len(setup["vocab"])), setup["vocab"], TINY, tmp_path / "m.pt"))
    args = ["eval", "regions", "--features", str(setup["store"]), "--snippets", str(setup["dir"] / "test.jsonl"),
            "--region-model", m, "--full-model", m, "--beam", "2", "--device", "cpu"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["rows"]) == 4 and doc["paper"]["CIDEr"]["region_model"] > 0
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "region model, RoI feature" in table.stdout and "paper, CIDEr" in table.stdout
    refused = runner.invoke(app, [*args, "--split", "train"])
    assert refused.exit_code == 2 and "train" in refused.stderr


def test_region_evaluation_aligns_with_a_fine_tuned_tops_model(setup: dict, tmp_path: Path,
                                                                tiny_region_encoder) -> None:
    """An aligner of a fine-tuned CNN top reads its own features (a store of its extractor, the same boxes)
    while the generators read ImageNet's: aligning here equals the snippets exported from that store. It
    stopped with a StoreError before (the aligner was handed the generators' store)."""
    from tiny_align import tiny_top_model

    from vsa_search.vision.regions import RegionEncoder

    aligner = load_align(tiny_top_model(tmp_path / "top.pt", vocab=setup["vocab"]))
    photos = {r.image_id: r.path for r in setup["test"]}
    extract_to_store(photos, tmp_path / "own", aligner.region_config,
                     encoder=RegionEncoder(aligner.region_config, "cpu", top=aligner.top))
    with FeatureStore(tmp_path / "own", readonly=True) as own:
        snippets.write_jsonl(snippets.snippets(aligner, own, setup["test"], beta=0.0), tmp_path / "test.jsonl")
    torch.manual_seed(1)
    m = save_caption(Captioner(CAP, len(setup["vocab"])), setup["vocab"], TINY, tmp_path / "m.pt")
    want = regions.evaluate_regions(m, m, setup["store"], snippets_path=tmp_path / "test.jsonl", beam=2, device="cpu")
    got = regions.evaluate_regions(m, m, setup["store"], align_model=aligner.path, align_features=tmp_path / "own",
                                   beta=0.0, beam=2, device="cpu")
    assert got["rows"] == want["rows"] and got["regions"] == want["regions"] > 0
