"""Search by photo (`--like`), the relevance floor and `--minus`, with the shipped model on the sample
photos: a resized, recompressed copy finds its original first; an indexed photo's nearest other photo
is its mirrored crop; a nonsense query gets "no photo matches"; a minus term demotes its best photo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from vsa_search import index
from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.core.errors import UsageError
from vsa_search.evaluation.calibrate import fit_platt, labelled_hits, reliability
from vsa_search.index.floor import calibration_path

EXAMPLES = paths.REPO_ROOT / "examples" / "photos"
SHIPPED = paths.REPO_ROOT / "weights" / "align.pt"
PHOTOS = ["horse.jpg", "chelsea-cat.jpg", "coffee.jpg", "camera.jpg", "rocket.jpg", "gravel.jpg"]
runner = CliRunner()
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped weights/align.pt")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("like")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy2(EXAMPLES / name, photos / name)
    # A mirrored crop of the horse: the indexed photo that is most like horse.jpg.
    im = Image.open(EXAMPLES / "horse.jpg").convert("RGB")
    ImageOps.mirror(im.crop((20, 10, im.width - 10, im.height - 20))).save(photos / "horse-mirror.jpg", quality=90)
    # Not indexed: the horse made smaller and recompressed hard.
    im.resize((im.width * 3 // 5, im.height * 3 // 5)).save(root / "horse-small.jpg", quality=40)
    (root / "not-a-photo.jpg").write_bytes(b"plain text, not a jpeg")
    mp = pytest.MonkeyPatch()
    mp.setenv("VSA_HOME", str(root))
    index.build([photos])
    yield root
    mp.undo()


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VSA_HOME", str(home))
    return home


def run_json(args: list[str]) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_like_finds_a_transformed_copy_first(env: Path) -> None:
    d = run_json(["search", "--like", str(env / "horse-small.jpg"), "-k", "3"])
    assert d["like"]["id"] is None  # not in the index: encoded afresh
    assert Path(d["hits"][0]["path"]).name == "horse.jpg"
    assert d["hits"][0]["score"] > d["hits"][1]["score"]
    pairs = d["hits"][0]["regions"]
    assert len(pairs) == len(d["like"]["boxes"])  # every query region finds its best region
    assert all(len(p["query_box"]) == 4 and len(p["box"]) == 4 for p in pairs)
    assert [p["score"] for p in pairs] == sorted((p["score"] for p in pairs), reverse=True)


def test_indexed_photos_nearest_other_photo(env: Path) -> None:
    horse = env / "photos" / "horse.jpg"
    by_path = run_json(["search", "--like", str(horse), "-k", "7"])
    assert by_path["like"]["id"] is not None
    keys = [Path(h["path"]).name for h in by_path["hits"]]
    assert "horse.jpg" not in keys and len(keys) == len(PHOTOS)  # itself left out, every other photo there
    assert keys[0] == "horse-mirror.jpg"
    by_id = run_json(["search", "--like", str(by_path["like"]["id"]), "-k", "7"])
    assert [h["path"] for h in by_id["hits"]] == [h["path"] for h in by_path["hits"]]


def test_like_steered_by_words_and_the_api(env: Path, tmp_path: Path) -> None:
    plain = index.like(env / "horse-small.jpg", k=7)
    steered = index.like(env / "horse-small.jpg", "a cat", k=7)
    rank = {Path(h.key).name: i for i, h in enumerate(steered.hits)}
    plain_rank = {Path(h.key).name: i for i, h in enumerate(plain.hits)}
    assert rank["chelsea-cat.jpg"] < plain_rank["chelsea-cat.jpg"]
    assert [m.word for m in steered.hits[0].words] == ["a", "cat"]
    res = runner.invoke(app, ["search", "--like", str(env / "horse-small.jpg"), "-k", "3",
                              "--sheet", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"like {env / 'horse-small.jpg'}\n")
    assert Image.open(tmp_path / "s.png").width > 3 * 320  # the query photo's tile, then three hits


@pytest.mark.parametrize("args,message", [
    (["--like", "{home}/not-a-photo.jpg"], "not-a-photo.jpg: not an image file"),
    (["--like", "{home}/missing.jpg"], "missing.jpg: no such file"),
    (["--like", "99"], "no photo 99 in index default (7 photos)"),
    (["--like", "7", "--image", "{home}/horse-small.jpg"], "--like searches one photo index"),
    (["cat", "--minus", " "], "--minus needs some words"),
    (["cat", "--min-score", "2"], "--min-score is a probability between 0 and 1"),
])
def test_bad_input_is_one_line(env: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["search", *[a.format(home=env) for a in args]])
    assert res.exit_code != 0 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_minus_demotes_the_photo_the_minus_term_matches_best(env: Path) -> None:
    best_cat = Path(run_json(["search", "a cat", "-k", "1", "--min-score", "0"])["hits"][0]["path"]).name
    assert best_cat == "chelsea-cat.jpg"
    plain = [Path(h["path"]).name for h in run_json(["search", "a photo", "-k", "7", "--min-score", "0"])["hits"]]
    d = run_json(["search", "a photo", "--minus", "a cat", "-k", "7", "--min-score", "0"])
    minus = [Path(h["path"]).name for h in d["hits"]]
    assert minus.index(best_cat) > plain.index(best_cat)
    assert minus[-1] == best_cat
    hit = d["hits"][0]
    assert hit["score"] == pytest.approx(hit["positive_score"] - sum(hit["minus_scores"]), abs=2e-4)
    assert [(w["word"], w["negative"]) for w in hit["words"]] == [("a", False), ("photo", False), ("a", True),
                                                                  ("cat", True)]
    assert all(len(w["box"]) == 4 for w in hit["words"])


needs_calibration = pytest.mark.skipif(not calibration_path(SHIPPED).is_file(),
                                       reason="needs weights/align.calibration.json (vsa eval calibrate)")


@needs_calibration
def test_nonsense_query_finds_no_photo_but_shows_the_best_few(env: Path) -> None:
    d = run_json(["search", "qwerty zxcv"])
    assert d["hits"] == [] and 1 <= len(d["below_floor"]) <= 3
    assert all(h["probability"] < d["floor"] for h in d["below_floor"])
    res = runner.invoke(app, ["search", "qwerty zxcv"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("no photo matches 'qwerty zxcv' well"))
    assert len(lines) - at - 1 == 2 * len(d["below_floor"])  # the best few anyway, each with its boxes
    good = run_json(["search", "a cat"])
    assert Path(good["hits"][0]["path"]).name == "chelsea-cat.jpg" and good["hits"][0]["probability"] >= good["floor"]
    every = run_json(["search", "qwerty zxcv", "--min-score", "0", "-k", "3"])
    assert len(every["hits"]) == 3 and every["below_floor"] == []


def test_platt_fit_recovers_a_known_curve() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, 20000)
    right = rng.random(len(s)) < 1 / (1 + np.exp(-(3.0 * s - 2.0)))
    a, b = fit_platt(s, right)
    assert a == pytest.approx(3.0, abs=0.15) and b == pytest.approx(-2.0, abs=0.1)
    table = reliability(1 / (1 + np.exp(-(a * s + b))), right)
    assert len(table) == 10 and all(abs(r["predicted"] - r["observed"]) < 0.04 for r in table)


def test_calibration_refuses_the_test_split(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="never on the test split"):
        labelled_hits(None, tmp_path, "test")  # type: ignore[arg-type]


def test_calibration_hits_come_from_search_with_the_bridge(tmp_path: Path) -> None:
    """labelled_hits searches an in-memory split as `vsa search` does, concept bridge included (it raised
    AttributeError once the bridge read an index's concept arrays): each photo's own sentence finds it."""
    from vsa_search.data.datasets import Dataset, Record
    from vsa_search.models.alignment import load_align
    from vsa_search.vision.features import extract_to_store

    model = load_align(SHIPPED)
    # each sentence says what its photo shows (horse.jpg: a black horse's silhouette on white)
    said = {"horse.jpg": "a black horse stands on a white background",
            "chelsea-cat.jpg": "a cat sits and looks at the camera",
            "coffee.jpg": "a cup of coffee on a table", "rocket.jpg": "a rocket launches into the sky"}
    photos = {n: EXAMPLES / n for n in said}
    store = tmp_path / "feats"
    extract_to_store(photos, store, model.region_config, device="cpu", top=model.top)
    ds = Dataset("examples", [Record(n, p, "dev", (said[n],)) for n, p in photos.items()])
    scores, right, n, count = labelled_hits(model, store, "dev", k=2, dataset=ds)
    assert (n, count, len(scores)) == (4, 4, 8)
    assert right.reshape(4, 2)[:, 0].all() and not right.reshape(4, 2)[:, 1].any()
    assert (scores.reshape(4, 2)[:, 0] >= scores.reshape(4, 2)[:, 1]).all()
