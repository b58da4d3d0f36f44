from __future__ import annotations

from pathlib import Path

import pytest

from vsa_search.core import paths

FLICKR = paths.flickr8k_root()


@pytest.fixture(scope="session")
def flickr_root() -> Path:
    assert FLICKR.is_dir(), f"tests need the shared Flickr8k photos at {FLICKR}"
    return FLICKR


@pytest.fixture(scope="session")
def sample_photos(flickr_root: Path) -> list[Path]:
    """A fixed handful of real photos, in a stable order."""
    return sorted((flickr_root / "images").glob("*.jpg"))[:8]


@pytest.fixture(scope="session")
def tiny_region_encoder():
    """One CNN for the whole session: loading EfficientNet is the slow part."""
    from vsa_search.core.config import REGION_PRESETS
    from vsa_search.vision.regions import RegionEncoder

    return RegionEncoder(REGION_PRESETS["tiny"], device="cpu")
