"""`make demo`'s index build after the shipped model changed (an update): it encodes the photos again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_align import tiny_model

from vsa_search import demo


def test_the_demo_index_follows_a_new_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            sample_photos: list[Path]) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_photos[:3]:
        shutil.copy2(p, photos / p.name)
    old, new = tiny_model(tmp_path / "old.pt", 0), tiny_model(tmp_path / "new.pt", 1)
    demo.vsa(*demo.build_step(photos, "--model", str(old)))
    report = json.loads(demo.vsa(*demo.build_step(photos, "--model", str(new), "--json"), capture=True))
    assert (report["photos"], report["encoded"], report["model_changed"]) == (3, 3, True)
    again = json.loads(demo.vsa(*demo.build_step(photos, "--model", str(new), "--json"), capture=True))
    assert (again["photos"], again["encoded"], again["unchanged"]) == (3, 0, 3)  # run again: nothing re-encoded
