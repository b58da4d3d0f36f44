"""`vsa index ...` and `vsa search ...` end to end: exact output, JSON, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tiny_align import tiny_model
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.data.datasets import load_flickr8k
from vsa_search.index import query

runner = CliRunner()
SHIPPED = paths.shipped_models_dir() / "align.pt"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    return tiny_model(d / "tiny.pt", 0), tiny_model(d / "other.pt", 1)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], models) -> Path:
    """$VSA_HOME with an index "default" of 5 photos (one corrupt file beside them)."""
    home = tmp_path_factory.mktemp("home")
    photos = home / "photos"
    photos.mkdir()
    for p in sample_photos[:5]:
        shutil.copy2(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        res = runner.invoke(app, ["index", "build", str(photos), "--model", str(models[0]), "--json"])
    assert res.exit_code == 0, res.stderr
    return home


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VSA_HOME", str(home))
    return home


def one_error_line(res, code: int = 1) -> str:
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    return lines[0]


def test_build_json_report(env: Path, models) -> None:
    photos = env / "photos"
    res = runner.invoke(app, ["index", "build", "--model", str(models[0]), "--json"])  # default: same roots
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert list(report) == ["index", "photos", "regions", "added", "changed", "moved", "removed", "unchanged",
                            "encoded", "resumed", "skipped", "index_type", "model", "up_to_date", "model_changed",
                            "replaced", "unreachable", "work_discarded"]
    assert report["index"] == str(env / "indexes" / "default")
    assert (report["photos"], report["unchanged"], report["encoded"], report["up_to_date"]) == (5, 5, 0, True)
    assert report["skipped"] == [{"path": str(photos / "broken.jpg"),
                                  "reason": f"{photos / 'broken.jpg'}: not an image file"}]
    assert report["index_type"] == "flat"


def test_search_json_is_stable_and_complete(env: Path) -> None:
    args = ["search", "a dog on the zeppelin grass", "-k", "3", "--json", "--no-bridge"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.stderr
    assert runner.invoke(app, args).stdout == first.stdout  # same query, same bytes
    out = json.loads(first.stdout)
    assert list(out) == ["query", "words", "ignored", "dropped", "stand_ins", "hits", "floor", "below_floor"]
    assert out["floor"] is None and out["below_floor"] == []  # no calibration for this model: no floor
    assert out["words"] == ["a", "dog", "on", "the", "grass"] and out["ignored"] == ["zeppelin"]
    assert [h["rank"] for h in out["hits"]] == [1, 2, 3]
    for h in out["hits"]:
        assert list(h) == ["rank", "path", "score", "words"]
        assert Path(h["path"]).parent == env / "photos"
        assert [w["word"] for w in h["words"]] == out["words"]
        assert all(list(w) == ["word", "score", "region", "box"] and len(w["box"]) == 4 for w in h["words"])
    # --paths prints exactly the same photos, one per line.
    paths_out = runner.invoke(app, ["search", "a dog on the zeppelin grass", "-k", "3", "--paths",
                                    "--no-bridge"]).stdout
    assert paths_out.splitlines() == [h["path"] for h in out["hits"]]


def test_search_human_output_and_sheet(env: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "two zeppelins", "-k", "2", "--sheet", str(tmp_path / "s.png"),
                              "--no-bridge"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "(not in the vocabulary, ignored: zeppelins)"
    assert lines[1].startswith("  1  ") and lines[3].startswith("  2  ")
    assert lines[2].split()[0] == "two" and len(lines) == 5
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and im.width > 300


def test_sheet_into_a_folder_names_the_file_written(env: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "a dog", "-k", "2", "--sheet", str(tmp_path), "--no-bridge"])
    assert res.exit_code == 0, res.stderr
    written = tmp_path / "sheet-a-dog.png"
    assert res.stderr.strip() == f"wrote {written}"
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary file left beside it
    with Image.open(written) as im:
        assert im.format == "PNG"


def test_sheet_in_a_missing_folder_is_an_error_before_the_search(env: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "s.png"
    line = one_error_line(runner.invoke(app, ["search", "a dog", "--sheet", str(missing), "--no-bridge"]), 2)
    assert line == f"error: {missing}: no folder {missing.parent} to write the sheet into"
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["search", ""], 2, "error: empty query: give some words to search for"),
    (["search", "zeppelin xylophone", "--no-bridge"], 2, "error: no known words in the query 'zeppelin xylophone': the "
                                          "model's vocabulary has none of zeppelin, xylophone"),
    (["search", "dog", "-k", "0"], 2, "error: -k must be at least 1 (got 0)"),
    (["search", "dog", "--json", "--paths"], 2, "error: --json and --paths exclude each other"),
    (["search"], 2, "error: give either a query TEXT, --like PHOTO or --image PHOTO"),
])
def test_query_errors_are_one_line(env: Path, args: list[str], code: int, message: str) -> None:
    assert one_error_line(runner.invoke(app, args), code) == message


def test_missing_index_is_one_line(env: Path) -> None:
    line = one_error_line(runner.invoke(app, ["search", "dog", "--index", "holiday"]))
    assert line == (f"error: no photo index 'holiday' at {env / 'indexes' / 'holiday'} "
                    "(create it with `vsa index build PATH`)")
    line = one_error_line(runner.invoke(app, ["search", "--image", "x.jpg", "--index", "holiday"]))
    assert "no sentence index 'holiday'" in line and "vsa index text FILE" in line
    assert "no index 'holiday'" in one_error_line(runner.invoke(app, ["index", "status", "--index", "holiday"]))


def test_model_mismatch_is_one_line(env: Path, models) -> None:
    line = one_error_line(runner.invoke(app, ["search", "dog", "--model", str(models[1])]))
    assert line.startswith("error: index default was built with model ")
    assert f"search with --model {models[0]}" in line


def test_status_json(env: Path, models) -> None:
    res = runner.invoke(app, ["index", "status", "--json"])
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["index"] == str(env / "indexes" / "default")
    p = s["photos"]
    assert (p["photos"], p["skipped"], p["index_type"], p["model_path"]) == (5, 1, "flat", str(models[0]))
    assert p["bytes"] > 0 and p["roots"] == [str(env / "photos")] and "sentences" not in s
    human = runner.invoke(app, ["index", "status"]).stdout
    assert "photos: 5" in human and "size on disk" in human


def test_text_index_and_image_search(env: Path, models, sample_photos: list[Path]) -> None:
    caps = env / "caps.txt"
    caps.write_text("a.jpg#0\tA dog on the grass .\na.jpg#1\tA man in red .\nb.jpg#0\tTwo girl in the water .\n")
    res = runner.invoke(app, ["index", "text", str(caps), "--index", "words", "--model", str(models[0]), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == {"index": str(env / "indexes" / "words.sentences"), "sentences": 3,
                                      "words": 14, "skipped": 0, "duplicates": 0, "index_type": "flat"}
    res = runner.invoke(app, ["search", "--image", str(sample_photos[0]), "--index", "words", "-k", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    hits = json.loads(res.stdout)["hits"]
    assert [list(h) for h in hits] == [["rank", "source", "text", "score", "words"]] * 2
    assert {h["source"] for h in hits} <= {"a.jpg#0", "a.jpg#1", "b.jpg#0"}
    res = runner.invoke(app, ["index", "remove", "--index", "words", "--json"])
    assert json.loads(res.stdout) == {"removed": [str(env / "indexes" / "words.sentences")]}


def test_build_and_remove_another_index(env: Path, models, sample_photos: list[Path]) -> None:
    res = runner.invoke(app, ["index", "build", str(sample_photos[0]), "--index", "one", "--model", str(models[0])])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[0] == f"{env / 'indexes' / 'one'}: built, 1 photos, " + \
        res.stdout.split("1 photos, ")[1].splitlines()[0]
    assert "1 added, 0 changed, 0 moved, 0 removed, 0 unchanged; 1 encoded" in res.stdout
    assert one_error_line(runner.invoke(app, ["index", "build", str(env / "nope"), "--index", "one",
                                              "--model", str(models[0])]), 2).endswith("no such file or directory")
    res = runner.invoke(app, ["index", "remove", "--index", "one"])
    assert res.stdout == f"removed {env / 'indexes' / 'one'}\n"
    assert not (env / "indexes" / "one").exists()


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped weights/align.pt (trained model)")
def test_shipped_model_finds_the_photo_of_a_caption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    flickr_root: Path) -> None:
    """With the trained model: index 6 test-split photos (never seen in training), search with
    each of their 30 captions, and find the captioned photo first far above chance (1 in 6)."""
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    records = load_flickr8k(flickr_root).present("test")[:6]
    photos = tmp_path / "photos"
    photos.mkdir()
    for r in records:
        shutil.copy2(r.path, photos / r.path.name)
    res = runner.invoke(app, ["index", "build", str(photos), "--json"])  # the default model
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["search", records[0].sentences[0], "-k", "6", "--paths", "--min-score", "0"])  # all 6
    assert res.exit_code == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == sorted(str(photos / r.path.name) for r in records)
    with ix.open_index() as x:
        model = query.model_for(x)
        first = [query.search_text(x, model, s, k=1).hits[0].key == str(photos / r.path.name)
                 for r in records for s in r.sentences]
    assert sum(first) >= 18, f"the captioned photo came first for only {sum(first)} of 30 captions"
