"""The documented library API (package docstring) runs as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vsa_search
from vsa_search import index
from vsa_search.core import paths

EXAMPLES = paths.REPO_ROOT / "examples" / "photos"


@pytest.fixture(scope="module")
def models() -> vsa_search.Models:
    return vsa_search.load()


def test_readme_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: vsa_search.Models) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee.jpg", "chelsea-cat.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    report = index.build([photos], name="demo", model=models.align)
    assert report.to_dict()["encoded"] == 3
    again = index.build([photos], name="demo", model=models.align)
    assert again.to_dict()["encoded"] == 0  # incremental: nothing re-encoded
    hits = index.search("a cup of coffee", name="demo", k=3).hits
    assert Path(hits[0].key).name == "coffee.jpg"
    assert [m.word for m in hits[0].words] == ["a", "cup", "of", "coffee"]
    found = index.search_floored("a cat", name="demo")
    assert Path(found.hits[0].key).name == "chelsea-cat.jpg"
    if found.floor is not None:  # calibrated: every hit kept clears the floor
        assert all(found.probability[id(h)] >= found.floor for h in found.hits)
    without = index.search("a photo", name="demo", minus=["a cat"])
    assert Path(without.hits[-1].key).name == "chelsea-cat.jpg" and without.minus == ["a cat"]
    like = index.like(photos / "coffee.jpg", name="demo", k=3)
    assert like.photo_id is not None and len(like.hits) == 2  # itself left out
    assert all(len(h.regions) == len(like.boxes) for h in like.hits)

    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    caps = vsa_search.caption([photos / "coffee.jpg", photos / "broken.jpg"], beam=3, models=models)
    assert caps[0].error is None and len(caps[0].caption.split()) >= 3 and caps[0].logprob < 0
    assert caps[1].caption is None and "broken.jpg" in caps[1].error
