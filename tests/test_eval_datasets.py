"""`vsa eval recall|caption` on a captioned data set of the user's own: a COCO captions file over the
sample photos (a COCO file has no split: --split all). Features are extracted once into the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.vision.features import FeatureStore

PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "photos"
CAPTIONS = {
    "coffee.jpg": ["a cup of coffee on a saucer", "a white cup full of black coffee"],
    "chelsea-cat.jpg": ["a cat looks at the camera", "a striped cat sitting down"],
    "horse.jpg": ["a horse standing in a field", "a brown horse outside"],
    "rocket.jpg": ["a rocket launching into the sky", "smoke under a rocket at lift off"],
    "astronaut.jpg": ["an astronaut in a white space suit", "a woman in a space suit smiling"],
    "coins.jpg": ["a pile of old coins", "many coins on a table"],
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    """(captions JSON, VSA_HOME) for the six photos."""
    tmp = tmp_path_factory.mktemp("coco")
    names = sorted(CAPTIONS)
    doc = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
           "annotations": [{"image_id": i, "caption": c} for i, n in enumerate(names) for c in CAPTIONS[n]]}
    path = tmp / "my_captions.json"
    path.write_text(json.dumps(doc))
    return path, tmp / "home"


def _run(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VSA_HOME", str(home))
    return CliRunner().invoke(app, args)


def _coco_args(captions: Path) -> list[str]:
    return ["--dataset", "coco", "--root", str(PHOTOS), "--captions", str(captions)]


def test_eval_recall_on_a_coco_file(coco, monkeypatch: pytest.MonkeyPatch) -> None:
    captions, home = coco
    r = _run(["eval", "recall", *_coco_args(captions), "--split", "all", "--baseline", "none", "--k", "1,5",
              "--json"], home, monkeypatch)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["dataset"], rep["split"], rep["photos"], rep["sentences"]) == ("my_captions", "all", 6, 12)
    rows = {row["name"]: row["metrics"] for row in rep["rows"]}
    assert rows["chance"]["image_search"]["R@1"] == pytest.approx(100 / 6)
    model = next(m for name, m in rows.items() if name.startswith("this model"))
    for direction in ("image_annotation", "image_search"):
        assert 0 <= model[direction]["R@1"] <= model[direction]["R@5"] <= 100
        lo, hi = model[direction]["R@1_ci"]
        assert lo <= model[direction]["R@1"] <= hi
    # The photos went into the one evaluation cache, and only once.
    with FeatureStore(rep["features"], readonly=True) as store:
        assert sorted(store.ids()) == sorted(CAPTIONS)
    # stderr is no terminal here: one line per stage, each with its real total.
    stages = [line.split("] ", 1)[1] for line in r.stderr.splitlines() if line.startswith("[")]
    assert stages[:3] == ["extracting all photos (6 photos)", "reading features (6 photos)",
                          f"scoring this model: {Path(model_path(rep)).name} (6 photos)"], r.stderr


def model_path(rep: dict) -> str:
    return next(row["path"] for row in rep["rows"] if row["name"].startswith("this model"))


def test_eval_caption_on_a_coco_file(coco, monkeypatch: pytest.MonkeyPatch) -> None:
    captions, home = coco
    r = _run(["eval", "caption", *_coco_args(captions), "--split", "all", "--beam", "2", "--json"], home,
             monkeypatch)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["dataset"], res["split"], res["test_photos"]) == ("my_captions", "all", 6)
    # Every photo is being evaluated, so none is left to be a nearest neighbour.
    assert "nearest neighbour" not in res["rows"] and res["train_photos_for_nn"] == 0
    row = res["rows"]["this model"]
    assert 1 <= row["distinct captions"] <= 6
    lo, hi = row["CIDEr_ci"]
    assert lo <= row["CIDEr"] <= hi
    assert {c["image"] for c in res["captions"]} == set(CAPTIONS)


def test_a_split_the_file_does_not_have_is_one_line(coco, monkeypatch: pytest.MonkeyPatch) -> None:
    captions, home = coco
    r = _run(["eval", "recall", *_coco_args(captions), "--baseline", "none"], home, monkeypatch)
    assert r.exit_code != 0
    assert "--split all" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
