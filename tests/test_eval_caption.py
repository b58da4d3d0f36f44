from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS
from vsa_search.data.datasets import load_flickr8k
from vsa_search.evaluation import metrics
from vsa_search.evaluation.captions import evaluate_captions
from vsa_search.evaluation.metrics import caption_metrics, nearest_neighbour
from vsa_search.models.captioner import Captioner, save_caption
from vsa_search.vision.features import extract_to_store

REFS = {"a": ["a black dog runs across the green grass", "a dog is running"],
        "b": ["two children play soccer in a park", "kids playing football outside"],
        "c": ["a man rides a red bicycle down the street", "a cyclist on a road"]}


def test_identical_candidate_and_reference_score_bleu_one() -> None:
    cands = {k: v[0] for k, v in REFS.items()}
    m = caption_metrics({k: [v[0]] for k, v in REFS.items()}, cands, meteor=False)
    for n in range(1, 5):
        assert m[f"BLEU-{n}"] == pytest.approx(100.0, abs=1e-3)
    assert m["METEOR"] is None and "notes" in m


def test_metrics_rank_a_right_caption_above_a_wrong_one() -> None:
    # METEOR starts a JVM (slow on a shared machine); `vsa eval caption` runs it.
    good = caption_metrics(REFS, {"a": "a dog runs on the grass", "b": "children play soccer",
                                  "c": "a man rides a bicycle"}, meteor=False)
    bad = caption_metrics(REFS, {"a": "a man rides a bicycle", "b": "a dog runs on the grass",
                                 "c": "children play soccer"}, meteor=False)
    for k in ("BLEU-1", "BLEU-4", "CIDEr"):
        assert good[k] > bad[k]


def test_meteor_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a, **k):
        raise FileNotFoundError("java")

    monkeypatch.setattr(metrics, "Meteor", broken)
    m = caption_metrics(REFS, {k: v[0] for k, v in REFS.items()})
    assert m["METEOR"] is None and "METEOR unavailable" in m["notes"]
    assert m["BLEU-1"] > 0


def test_nearest_neighbour_is_cosine() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    test = torch.tensor([[5.0, 0.1], [0.1, 0.9], [3.0, 2.9]])  # the last is nearest [1, 0] in L2
    assert nearest_neighbour(train, test).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, caption_vocab) -> Path:
    """An untrained tiny captioner on tiny-preset features: enough to exercise every command."""
    torch.manual_seed(0)
    vocab = caption_vocab
    path = tmp_path_factory.mktemp("capmodel") / "cap.pt"
    save_caption(Captioner(CAPTION_PRESETS["tiny"], len(vocab)), vocab, REGION_PRESETS["tiny"], path)
    return path


def test_caption_cli_real_and_corrupt_photo(tiny_model: Path, sample_photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 300)
    good = Path(shutil.copy(sample_photos[0], tmp_path / sample_photos[0].name))
    r = CliRunner().invoke(app, ["caption", str(bad), str(good), "--model", str(tiny_model), "--beam", "3",
                                 "--json"])
    assert r.exit_code == 1
    rows = json.loads(r.stdout)
    assert [row["photo"] for row in rows] == [str(good)]
    assert rows[0]["caption"] and rows[0]["logprob"] < 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.jpg" in lines[0]
    assert "Traceback" not in r.stderr


def test_caption_cli_missing_model_is_one_line(sample_photos: list[Path], tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["caption", str(sample_photos[0]), "--model", str(tmp_path / "none.pt")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "no such model" in r.stderr


def test_evaluate_captions_side_by_side(tiny_model: Path, flickr_root: Path, tmp_path: Path,
                                        tiny_region_encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_flickr8k(flickr_root)
    photos = ds.present("train")[:4] + ds.present("test")[:3]
    store = tmp_path / "store"
    extract_to_store({r.image_id: r.path for r in photos}, store, REGION_PRESETS["tiny"], encoder=tiny_region_encoder)
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    res = evaluate_captions(tiny_model, store, beam=2)
    assert res["test_photos"] == 3 and res["train_photos_for_nn"] == 4
    assert set(res["rows"]) == {"this model", "nearest neighbour", "paper (Flickr8k, 1,000 test)"}
    assert res["rows"]["paper (Flickr8k, 1,000 test)"]["BLEU-4"] == 16.0
    train_first = {r.sentences[0] for r in photos[:4]}
    assert all(c["nearest_neighbour"] in train_first for c in res["captions"])
    r = CliRunner().invoke(app, ["eval", "caption", "--model", str(tiny_model), "--features", str(store),
                                 "--beam", "1", "--show", "2"])
    assert r.exit_code == 0, r.output
    assert "3 test photos" in r.stdout and "nearest neighbour" in r.stdout and "16.0" in r.stdout
    assert "METEOR not run in tests" in r.stdout
