from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.data.datasets import load_flickr8k
from vsa_search.models.alignment import AlignModel, save_align
from vsa_search.vision.features import extract_to_store

TINY = REGION_PRESETS["tiny"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No default index or model from the checkout leaks into these tests."""
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, caption_vocab) -> Path:
    torch.manual_seed(0)
    vocab = caption_vocab
    return save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, TINY,
                      tmp_path_factory.mktemp("m") / "align.pt")


def one_error_line(result) -> str:
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr
    return lines[0]


def test_align_json_and_picture(model_path: Path, sample_photos: list[Path], tmp_path: Path) -> None:
    photo = sample_photos[1]
    res = runner.invoke(app, ["align", str(photo), "Two dogs play in the snow.", "--model", str(model_path),
                              "--beta", "0.5", "--json", "--out", str(tmp_path / "fig.png")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["tokens"] == ["two", "dogs", "play", "in", "the", "snow"]
    assert " ".join(f["text"] for f in doc["fragments"]) == "two dogs play in the snow"
    w, h = Image.open(photo).size
    assert doc["image_size"] == [w, h]
    for f in doc["fragments"]:
        x0, y0, x1, y1 = f["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    with Image.open(tmp_path / "fig.png") as pic:
        assert pic.size[0] >= w and pic.size[1] >= h


def test_options_before_photo_and_plain_output(model_path: Path, sample_photos: list[Path]) -> None:
    # A huge β puts every word on one region: one fragment, one line.
    res = runner.invoke(app, ["align", "--beta", "1000", "--no-bridge", "--model", str(model_path),
                              str(sample_photos[0]), "a girl climbs the stairs"])
    assert res.exit_code == 0, res.output
    # Lines in brackets report words the model does not know; the rest are the fragments.
    fragments = [line for line in res.stdout.strip().splitlines() if not line.startswith("(")]
    assert len(fragments) == 1 and fragments[0].startswith("'a girl climbs the stairs'")


@pytest.mark.parametrize("args, words", [
    (["PHOTO", "  ?! "], "no words"),
    (["missing.jpg", "a dog"], "no such file"),
    (["PHOTO", "a dog", "--model", "nope.pt"], "no such model"),
])
def test_errors_are_one_line(args: list[str], words: str, model_path: Path, sample_photos: list[Path],
                             tmp_path: Path) -> None:
    args = [str(sample_photos[0]) if a == "PHOTO" else str(tmp_path / a) if a.endswith(".jpg") else a for a in args]
    if "--model" not in args:
        args += ["--model", str(model_path)]
    line = one_error_line(runner.invoke(app, ["align", *args]))
    assert words in line


def test_negative_beta_is_a_usage_error(model_path: Path, sample_photos: list[Path]) -> None:
    res = runner.invoke(app, ["align", str(sample_photos[0]), "a dog", "--beta", "-1", "--model", str(model_path)])
    assert res.exit_code == 2


def test_export(model_path: Path, sample_photos: list[Path], tmp_path: Path, tiny_region_encoder,
                flickr_root: Path) -> None:
    split = {r.image_id: r.split for r in load_flickr8k().records}
    flickr = sorted((flickr_root / "images").glob("*.jpg"))[:8]  # the export needs photos with Flickr8k splits
    photos = {p.name: p for p in [q for q in flickr if split[q.name] == "train"][:3]}
    assert photos, "no training photo among the samples"
    store = tmp_path / "store"
    extract_to_store(photos, store, TINY, encoder=tiny_region_encoder)
    out = tmp_path / "snips" / "s.jsonl"
    res = runner.invoke(app, ["align", "export", "--features", str(store), "--split", "train", "--beta", "0.5",
                              "--model", str(model_path), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["photos"] == len(photos) and summary["fragments"] == len(rows) > 0
    assert summary["sentences"] == 5 * len(photos)
    assert {r["image_id"] for r in rows} == set(photos)
    assert all(r["fragment"] for r in rows)
    # The figures the README quotes for the default beta come from these two fields.
    assert summary["fragments_per_sentence"] == round(len(rows) / summary["sentences"], 2)
    words = sum(r["span"][1] - r["span"][0] for r in rows)
    assert summary["words_per_fragment"] == round(words / len(rows), 2)
    assert words == sum(len(r["fragment"].split()) for r in rows)


def test_export_refuses_missing_store(model_path: Path, tmp_path: Path, flickr_root: Path) -> None:
    res = runner.invoke(app, ["align", "export", "--features", str(tmp_path / "none"), "--out",
                              str(tmp_path / "s.jsonl"), "--model", str(model_path)])
    assert "no feature store" in one_error_line(res)
    assert not (tmp_path / "s.jsonl").exists()


def test_help_lists_export() -> None:
    res = runner.invoke(app, ["align", "--help"])
    assert res.exit_code == 0 and "export" in res.stdout


def test_indexed_photo_reuses_stored_regions(model_path: Path, sample_photos: list[Path], tmp_path: Path,
                                            tiny_region_encoder) -> None:
    import shutil

    from vsa_search import index
    from vsa_search.models.alignment import load_align

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_photos[:2]:
        shutil.copy2(p, photos / p.name)
    index.build_photos([photos], load_align(model_path), None, encoder=tiny_region_encoder)  # $VSA_HOME default
    photo = photos / sample_photos[1].name
    args = ["align", str(photo), "a dog runs on the grass", "--model", str(model_path), "--beta", "0.3", "--json"]
    from_index = json.loads(runner.invoke(app, args).stdout)
    fresh = json.loads(runner.invoke(app, [*args, "--no-index"]).stdout)
    assert from_index["regions_from"] == "index default" and fresh["regions_from"] == "photo"
    # float16 storage aside, the index holds the very regions a fresh run computes
    assert [f["box"] for f in from_index["fragments"]] == [f["box"] for f in fresh["fragments"]]
    assert [f["text"] for f in from_index["fragments"]] == [f["text"] for f in fresh["fragments"]]
    for a, b in zip(from_index["fragments"], fresh["fragments"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-2)
    # A photo changed since indexing is not trusted to the index.
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    assert json.loads(runner.invoke(app, args).stdout)["regions_from"] == "photo"
    # Naming an index that does not exist is an error, not a silent fallback.
    assert "no photo index" in one_error_line(runner.invoke(app, [*args, "--index", "nope"]))


def test_regions_from_names_the_index_that_held_them(model_path: Path, sample_photos: list[Path],
                                                     tmp_path: Path, tiny_region_encoder) -> None:
    """No default index: the photo's regions come from another index, and --json says which."""
    import shutil

    from vsa_search import index
    from vsa_search.models.alignment import load_align

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(sample_photos[0], photos / sample_photos[0].name)
    index.build_photos([photos], load_align(model_path), "holiday", encoder=tiny_region_encoder)
    args = ["align", str(photos / sample_photos[0].name), "a dog runs", "--model", str(model_path), "--json"]
    assert json.loads(runner.invoke(app, args).stdout)["regions_from"] == "index holiday"
    named = json.loads(runner.invoke(app, [*args, "--index", "holiday"]).stdout)
    assert named["regions_from"] == "index holiday"
