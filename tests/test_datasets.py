from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsa_search.core.errors import DatasetError, UsageError
from vsa_search.data.datasets import Dataset, Record, load_coco, load_dataset, load_flickr8k, load_karpathy


@pytest.fixture(scope="module")
def flickr(flickr_root: Path) -> Dataset:
    return load_flickr8k(flickr_root)


def test_flickr8k_counts(flickr: Dataset) -> None:
    assert flickr.name == "flickr8k"
    assert len(flickr.records) == 8091
    assert [len(flickr.split(s)) for s in ("train", "dev", "test", "none")] == [6000, 1000, 1000, 91]
    # The shared copy holds every photo of the data set.
    assert [len(flickr.present(s)) for s in ("train", "dev", "test", "none")] == [6000, 1000, 1000, 91]
    assert len(flickr.present()) == 8091 and flickr.missing() == []


def test_flickr8k_records(flickr: Dataset, flickr_root: Path) -> None:
    assert all(len(r.sentences) == 5 and all(r.sentences) for r in flickr.records)
    ids = [r.image_id for r in flickr.records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(r.path.is_absolute() and r.path.name == r.image_id for r in flickr.records)
    # The token file's stray "2258277193_586949ec62.jpg.1" key is not a photo.
    assert not any(i.endswith(".1") for i in ids)
    first = flickr.records[0]
    assert first.image_id == "1000268201_693b08cb0e.jpg" and first.split == "train"
    assert first.sentences[0] == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert first.path == (flickr_root / "images" / first.image_id).resolve()
    # The split lists agree with the records.
    test_list = (flickr_root / "splits" / "Flickr_8k.testImages.txt").read_text().split()
    assert {r.image_id for r in flickr.split("test")} == set(test_list)


def test_flickr8k_summary(flickr: Dataset) -> None:
    s = flickr.summary()
    assert s["total"] == 8091 and s["present"] == 8091 and s["missing"] == 0
    assert s["splits"]["train"] == {"total": 6000, "present": 6000, "missing": 0}
    assert s["splits"]["none"] == {"total": 91, "present": 91, "missing": 0}


def test_load_dataset_default_root(flickr: Dataset) -> None:
    assert load_dataset("flickr8k") == flickr


def test_unknown_split_name(flickr: Dataset) -> None:
    with pytest.raises(UsageError):
        flickr.split("val")


def test_coco_reader(tmp_path: Path, sample_photos: list[Path]) -> None:
    a, b, c = sample_photos[:3]
    doc = {
        "images": [
            {"id": 7, "file_name": b.name},
            {"id": 3, "file_name": a.name},
            {"id": 9, "file_name": "not_here.jpg"},
            {"id": 4, "file_name": c.name},
        ],
        "annotations": [
            {"image_id": 3, "caption": "A dog runs ."},
            {"image_id": 7, "caption": "Two kids play ."},
            {"image_id": 3, "caption": " A brown dog. "},
            {"image_id": 9, "caption": "Nothing to see ."},
        ],
    }
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps(doc))
    ds = load_coco(path, a.parent, split="val")
    assert [r.image_id for r in ds.records] == sorted([a.name, b.name, c.name, "not_here.jpg"])
    by_id = {r.image_id: r for r in ds.records}
    assert by_id[a.name] == Record(a.name, a.resolve(), "dev", ("A dog runs .", "A brown dog."))
    assert by_id[c.name].sentences == ()
    assert {r.split for r in ds.records} == {"dev"}
    assert len(ds.present()) == 3 and [r.image_id for r in ds.missing()] == ["not_here.jpg"]
    assert load_dataset("coco", a.parent, captions_json=path, split="val") == ds


def test_karpathy_reader(tmp_path: Path, flickr: Dataset, flickr_root: Path) -> None:
    picks = [flickr.present("train")[0], flickr.present("dev")[0], flickr.present("test")[0]]
    doc = {
        "dataset": "flickr8k",
        "images": [
            {
                "filename": r.image_id,
                "split": {"train": "restval", "dev": "val", "test": "test"}[r.split],
                "sentences": [{"raw": s, "tokens": s.lower().split()} for s in r.sentences],
            }
            for r in reversed(picks)
        ],
    }
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps(doc))
    ds = load_karpathy(path, flickr_root / "images")
    # Same photos, same Record shape as the official reader, splits mapped back.
    assert ds.name == "flickr8k" and ds.records == picks
    assert load_dataset("karpathy", flickr_root / "images", dataset_json=path) == ds


def test_karpathy_filepath_and_tokens_only(tmp_path: Path, sample_photos: list[Path]) -> None:
    photo = sample_photos[0]
    sub = tmp_path / "val2014"
    sub.mkdir()
    (sub / photo.name).write_bytes(photo.read_bytes())
    doc = {
        "images": [
            {
                "filepath": "val2014",
                "filename": photo.name,
                "split": "val",
                "sentences": [{"tokens": ["a", "dog"]}],
            }
        ]
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(doc))
    (rec,) = load_karpathy(path, tmp_path).records
    assert rec.path == (sub / photo.name).resolve() and rec.split == "dev" and rec.sentences == ("a dog",)
    assert rec.path.is_file()


def test_missing_paths(tmp_path: Path, flickr_root: Path) -> None:
    with pytest.raises(DatasetError, match="nope"):
        load_flickr8k(tmp_path / "nope")
    with pytest.raises(DatasetError, match="Flickr8k.token.txt"):
        load_flickr8k(tmp_path)  # exists, but no token file
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA cat .\n")
    with pytest.raises(DatasetError, match="Flickr_8k.trainImages.txt"):
        load_flickr8k(tmp_path)
    with pytest.raises(DatasetError, match="missing.json"):
        load_coco(tmp_path / "missing.json", flickr_root / "images")
    with pytest.raises(DatasetError, match="no_images"):
        load_karpathy(tmp_path / "x.json", tmp_path / "no_images")


def test_malformed_files(tmp_path: Path, flickr_root: Path) -> None:
    images = flickr_root / "images"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for loader in (load_coco, load_karpathy):
        with pytest.raises(DatasetError, match="bad.json") as e:
            loader(bad, images)
        assert "\n" not in str(e.value)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": [{"file_name": "x.jpg"}]}))
    with pytest.raises(DatasetError, match="wrong.json"):
        load_coco(wrong, images)
    with pytest.raises(DatasetError, match="wrong.json"):
        load_karpathy(wrong, images)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "holdout", "sentences": []}]}))
    with pytest.raises(DatasetError, match="holdout"):
        load_karpathy(odd, images)
    (tmp_path / "Flickr8k.token.txt").write_text("no tab on this line\n")
    with pytest.raises(DatasetError, match=r"token.txt:1"):
        load_flickr8k(tmp_path)


def test_load_dataset_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown"):
        load_dataset("imagenet")
    with pytest.raises(UsageError, match="captions_json"):
        load_dataset("coco", tmp_path)
    with pytest.raises(UsageError, match="split"):
        load_dataset("flickr8k", split="train")
    with pytest.raises(UsageError, match="images folder"):
        load_dataset("karpathy", dataset_json=tmp_path / "x.json")
