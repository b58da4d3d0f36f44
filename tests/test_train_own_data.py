"""Training on your own photos and captions (README "Train on your own data"), end to end through the CLI:
a Karpathy-style JSON over the sample photos -> features -> train embed / caption / querybank -> index ->
search -> eval recall. Nothing here needs Flickr8k."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.models.alignment import load_align
from vsa_search.models.captioner import load_caption

runner = CliRunner()

# Three captions per sample photo; "zeppelin" and "telescope" appear only in test captions and
# "meadow" only in dev ones: none of them may reach a vocabulary.
CAPTIONS = {
    "astronaut.jpg": ("train", ["a woman in a white suit smiles", "an astronaut in a white suit",
                                "a smiling woman stands in front of a flag"]),
    "brick.jpg": ("train", ["a red brick wall", "a wall of red bricks", "old red bricks in a wall"]),
    "camera.jpg": ("train", ["a man holds a camera", "a man in a black coat with a camera",
                             "a man stands on the grass with a camera"]),
    "chelsea-cat.jpg": ("train", ["a brown cat looks at the camera", "a cat with green eyes",
                                  "a brown cat sits on the floor"]),
    "coffee.jpg": ("train", ["a cup of coffee on a white plate", "a red cup of coffee", "a cup on a plate"]),
    "coins.jpg": ("train", ["many old coins", "old coins on a table", "a table of small coins"]),
    "grass.jpg": ("val", ["green grass in the sun", "a green meadow", "grass in the sun"]),
    "gravel.jpg": ("val", ["small grey stones", "grey stones on the ground", "small stones on the ground"]),
    "horse.jpg": ("val", ["a black horse", "a black horse runs", "a horse on a white ground"]),
    "hubble-deep-field.jpg": ("test", ["many small lights in a black sky", "a black sky through a telescope",
                                       "small lights in the sky"]),
    "retina.jpg": ("test", ["a red and orange eye", "an orange eye with red lines", "a red eye"]),
    "rocket.jpg": ("test", ["a white rocket by the sea", "a white zeppelin by the sea", "a rocket stands"]),
}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"


def _ok(res) -> str:
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return res.stdout


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The photos, the Karpathy JSON, and the feature store that `vsa features extract` makes of them."""
    d = tmp_path_factory.mktemp("own")
    photos = d / "photos"
    photos.mkdir()
    images = []
    for name, (split, sents) in CAPTIONS.items():
        shutil.copy2(EXAMPLES / name, photos / name)
        images.append({"filename": name, "split": split, "sentences": [{"raw": s} for s in sents]})
    captions = d / "mine.json"
    captions.write_text(json.dumps({"dataset": "mine", "images": images}))
    feats = d / "feats"
    rep = json.loads(_ok(runner.invoke(app, ["features", "extract", "--dataset", "karpathy", "--root", str(photos),
                                             "--captions", str(captions), "--preset", "tiny", "--out", str(feats),
                                             "--device", "cpu", "--json"])))
    assert rep["extracted"] == len(CAPTIONS)
    return {"dir": d, "photos": photos, "captions": captions, "feats": feats}


def _data(own: dict[str, Path]) -> list[str]:
    return ["--dataset", "karpathy", "--root", str(own["photos"]), "--captions", str(own["captions"])]


def test_train_embed_index_search_and_eval_on_your_own_data(own, tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "mine.pt"
    rep = json.loads(_ok(runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), *_data(own),
                                             "--preset", "tiny", "--epochs", "2", "--min-count", "1",
                                             "--device", "cpu", "--out", str(model), "--json"])))
    assert rep["epochs"] == 2 and rep["dev"]  # dev recall from the 3 "val" photos
    loaded = load_align(model)
    assert loaded.metrics["train_photos"] == 6 and loaded.metrics["dev_photos"] == 3
    assert loaded.metrics["dataset"] == "mine"
    assert {"astronaut", "coins", "bricks"} <= set(loaded.vocab.itos)  # the training split's words
    assert not {"zeppelin", "telescope", "meadow"} & set(loaded.vocab.itos)  # never dev or test words

    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    built = json.loads(_ok(runner.invoke(app, ["index", "build", str(own["photos"]), "--model", str(model),
                                               "--device", "cpu", "--json"])))
    assert built["photos"] == len(CAPTIONS)
    hits = json.loads(_ok(runner.invoke(app, ["search", "a brown cat", "-k", "5", "--no-bridge", "--json"])))
    found = [Path(h["path"]).name for h in hits["hits"]]
    assert hits["words"] == ["a", "brown", "cat"] and hits["ignored"] == []
    assert len(found) == 5 and set(found) <= set(CAPTIONS)

    table = _ok(runner.invoke(app, ["eval", "recall", "--model", str(model), "--features", str(own["feats"]),
                                    *_data(own), "--split", "test", "--baseline", "none", "--k", "1,2,3"]))
    assert "Image annotation" in table and "Image search" in table and "R@3" in table
    rec = json.loads(_ok(runner.invoke(app, ["eval", "recall", "--model", str(model), "--features",
                                             str(own["feats"]), *_data(own), "--split", "test", "--baseline",
                                             "none", "--k", "1,2,3", "--json"])))
    search = rec["rows"][0]["metrics"]["image_search"]
    assert 0 <= search["R@1"] <= search["R@3"] == 100.0  # 3 test photos: every sentence's photo is in the top 3

    # --init: start from that model; a lower --min-count grows its vocabulary by training words only.
    grown = tmp_path / "grown.pt"
    _ok(runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), *_data(own), "--init", str(model),
                            "--epochs", "1", "--min-count", "1", "--device", "cpu", "--out", str(grown)]))
    small = tmp_path / "small.pt"
    _ok(runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), *_data(own), "--preset", "tiny",
                            "--epochs", "1", "--min-count", "3", "--device", "cpu", "--out", str(small)]))
    _ok(runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), *_data(own), "--init", str(small),
                            "--epochs", "1", "--min-count", "1", "--device", "cpu", "--out", str(grown)]))
    before, after = load_align(small), load_align(grown)
    assert after.vocab.itos[: len(before.vocab)] == before.vocab.itos  # old words keep their ids
    assert len(after.vocab) == len(loaded.vocab) > len(before.vocab)
    assert set(after.vocab.itos) == set(loaded.vocab.itos)
    assert after.metrics["init"] == str(small) and after.config == before.config


def test_train_caption_and_querybank_on_your_own_data(own, tmp_path: Path) -> None:
    cap = tmp_path / "cap.pt"
    rep = json.loads(_ok(runner.invoke(app, ["train", "caption", "--features", str(own["feats"]), *_data(own),
                                             "--preset", "tiny", "--min-count", "1", "--device", "cpu",
                                             "--out", str(cap), "--json"])))
    assert (rep["train_photos"], rep["dev_photos"]) == (6, 3)
    loaded = load_caption(cap)
    assert "coins" in loaded.vocab.itos and "zeppelin" not in loaded.vocab.itos
    assert loaded.metrics["dataset"] == "mine"

    align = tmp_path / "align.pt"
    _ok(runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), *_data(own), "--preset", "tiny",
                            "--epochs", "1", "--min-count", "1", "--device", "cpu", "--out", str(align)]))
    qb = json.loads(_ok(runner.invoke(app, ["train", "querybank", "--model", str(align), "--features",
                                            str(own["feats"]), *_data(own), "--photos", "3", "--sentences", "6",
                                            "--out", str(tmp_path / "qb.pt"), "--json"])))
    assert qb["train_photos_available"] == 6 and (qb["photos"], qb["sentences"]) == (3, 6)
    assert load_align(tmp_path / "qb.pt").querybank is not None


def test_training_on_a_store_without_the_data_sets_photos_is_one_line(own, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"filename": "elsewhere.jpg", "split": "train",
                                             "sentences": [{"raw": "a photo"}]}]}))
    res = runner.invoke(app, ["train", "embed", "--features", str(own["feats"]), "--dataset", "karpathy", "--root",
                              str(own["photos"]), "--captions", str(other), "--preset", "tiny", "--device", "cpu",
                              "--out", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {own['feats']}: holds none of the other train-split photos (extract them with vsa features "
        f"extract and the same --dataset options)"]


def test_fine_tune_the_shipped_models_on_your_own_data(own, tmp_path: Path) -> None:
    """--init align / --init caption: the shipped models go on training on your photos, each on features of
    its own extractor (the alignment model's fine-tuned CNN top, the captioner's default region preset);
    their vocabulary (Flickr8k's training words) grows by your training split's new words."""
    shipped = paths.shipped_models_dir()
    feats = {"align": tmp_path / "top-feats", "caption": tmp_path / "feats"}
    _ok(runner.invoke(app, ["features", "extract", *_data(own), "--out", str(feats["caption"]), "--device", "cpu"]))
    # Features of ImageNet's CNN are refused for the alignment model, with the command that makes its own.
    refused = runner.invoke(app, ["train", "embed", "--features", str(feats["caption"]), *_data(own),
                                  "--init", str(shipped / "align.pt"), "--epochs", "1", "--device", "cpu",
                                  "--out", str(tmp_path / "refused.pt")])
    assert refused.exit_code != 0 and "vsa features extract --model" in refused.output, refused.output
    _ok(runner.invoke(app, ["features", "extract", *_data(own), "--model", str(shipped / "align.pt"),
                            "--out", str(feats["align"]), "--device", "cpu"]))
    shipped_align, shipped_caption = load_align(shipped / "align.pt"), load_caption(shipped / "caption.pt")
    n = len(shipped_align.vocab)
    for kind, init in (("embed", "align"), ("caption", "caption")):
        _ok(runner.invoke(app, ["train", kind, "--features", str(feats[init]), *_data(own),
                                "--init", str(shipped / f"{init}.pt"), "--epochs", "1", "--min-count", "1",
                                "--device", "cpu", "--out", str(tmp_path / f"{init}.pt")]))
    for tuned, model in ((load_align(tmp_path / "align.pt"), shipped_align),
                         (load_caption(tmp_path / "caption.pt"), shipped_caption)):
        assert tuned.vocab.itos[:n] == model.vocab.itos
        assert {"astronaut", "bricks", "coins"} <= set(tuned.vocab.itos[n:])  # new training words, appended
        assert "zeppelin" not in tuned.vocab.itos
        assert tuned.metrics["init"] == str(model.path)
