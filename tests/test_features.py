from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vsa_search.cli import app
from vsa_search.core.config import REGION_PRESETS
from vsa_search.core.errors import StoreError
from vsa_search.vision.features import FeatureStore, extract_to_store

TINY = REGION_PRESETS["tiny"]


@pytest.fixture()
def photo_dir(tmp_path: Path, sample_photos: list[Path]) -> dict[str, Path]:
    """Five real photos plus a truncated and a corrupt one."""
    d = tmp_path / "photos"
    d.mkdir()
    photos = {}
    for p in sample_photos[:5]:
        photos[p.name] = Path(shutil.copy(p, d / p.name))
    data = sample_photos[5].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "corrupt.jpg").write_bytes(b"\x00" * 500)
    photos["truncated.jpg"] = d / "truncated.jpg"
    photos["corrupt.jpg"] = d / "corrupt.jpg"
    return photos


def test_bad_photos_are_skipped_others_stored(tmp_path: Path, photo_dir, tiny_region_encoder) -> None:
    report = extract_to_store(photo_dir, tmp_path / "store", TINY, batch_size=3, encoder=tiny_region_encoder)
    assert report.extracted == 5
    assert set(report.skipped) == {"truncated.jpg", "corrupt.jpg"}
    assert "truncated" in report.skipped["truncated.jpg"]
    with FeatureStore(tmp_path / "store", readonly=True) as fs:
        assert sorted(fs.ids()) == sorted(k for k in photo_dir if k not in ("truncated.jpg", "corrupt.jpg"))
        rf = fs.get(next(iter(photo_dir)))
        assert rf.features.shape == (len(rf.boxes), 1280) and len(rf.boxes) <= TINY.max_regions


def test_resume_after_interruption_equals_clean_run(tmp_path: Path, photo_dir, tiny_region_encoder) -> None:
    clean = tmp_path / "clean"
    extract_to_store(photo_dir, clean, TINY, batch_size=2, encoder=tiny_region_encoder)

    calls = []

    def die_after_first_batch(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(photo_dir, resumed, TINY, batch_size=2, encoder=tiny_region_encoder,
                         on_progress=die_after_first_batch)
    with FeatureStore(resumed, readonly=True) as fs:
        assert 0 < len(fs) + len(fs.skipped()) < len(photo_dir)  # really stopped part-way
    report = extract_to_store(photo_dir, resumed, TINY, batch_size=2, encoder=tiny_region_encoder)
    assert report.already == 2 and report.extracted == 3

    with FeatureStore(clean, readonly=True) as a, FeatureStore(resumed, readonly=True) as b:
        assert a.ids() == b.ids() and a.skipped() == b.skipped()
        for i in a.ids():
            fa, fb = a.get(i), b.get(i)
            np.testing.assert_array_equal(fa.boxes, fb.boxes)
            np.testing.assert_allclose(fa.features, fb.features, atol=2e-3, rtol=1e-2)


def test_store_refuses_other_extractor(tmp_path: Path, photo_dir, tiny_region_encoder) -> None:
    extract_to_store(dict(list(photo_dir.items())[:1]), tmp_path / "s", TINY, encoder=tiny_region_encoder)
    with pytest.raises(StoreError, match="made by extractor"):
        FeatureStore(tmp_path / "s", REGION_PRESETS["default"])
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path / "elsewhere", readonly=True)


def test_cli_extract_karpathy_json(tmp_path: Path, photo_dir) -> None:
    ds = {"images": [{"filename": name, "split": "train", "sentences": [{"raw": "a photo", "tokens": ["a"]}]}
                     for name in photo_dir]}
    (tmp_path / "dataset.json").write_text(json.dumps(ds))
    root = next(iter(photo_dir.values())).parent
    args = ["features", "extract", "--dataset", "karpathy", "--root", str(root), "--captions",
            str(tmp_path / "dataset.json"), "--preset", "tiny", "--out", str(tmp_path / "store"), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["extracted"] == 5 and sorted(rep["skipped"]) == ["corrupt.jpg", "truncated.jpg"]
    again = json.loads(CliRunner().invoke(app, args).stdout)  # second run: nothing redone
    assert again["extracted"] == 0 and again["already_stored"] == 5


def test_cli_missing_root_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["features", "extract", "--root", str(tmp_path / "nope"), "--out",
                                 str(tmp_path / "s")])
    assert r.exit_code != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:")


def test_both_photo_stores_refuse_another_config_and_format(tmp_path: Path) -> None:
    """The feature store and the map store share one opening (vision/photostore.py): another config, another
    format and an empty folder are each one clear StoreError."""
    import dataclasses

    from vsa_search.core.config import MAP_PRESETS
    from vsa_search.core.kv import KV
    from vsa_search.vision.trunk import MapStore

    MapStore(tmp_path / "maps", MAP_PRESETS["tiny"]).close()
    with pytest.raises(StoreError, match="holds maps of .*cut6.*, not .*cut5.*; use another --out"):
        MapStore(tmp_path / "maps", dataclasses.replace(MAP_PRESETS["tiny"], cut=5))
    FeatureStore(tmp_path / "feats", REGION_PRESETS["tiny"]).close()
    kv = KV(tmp_path / "feats")
    kv.put_json("meta", {**kv.get_json("meta"), "format_version": 0})
    kv.close()
    with pytest.raises(StoreError, match="feature store format 0, this version reads 1; extract again"):
        FeatureStore(tmp_path / "feats", readonly=True)
    with pytest.raises(StoreError, match="no map store here"):
        MapStore(tmp_path / "nothing", readonly=True)
