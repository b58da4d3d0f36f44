"""What a photo build stores beside each photo's vectors for duplicate finding and metadata filters:
the record field "meta" = {"v", "phash", "sharp", "width", "height"} plus "taken", "camera"
and "gps" when the photo's EXIF has them. Indexes built before it lack the field; the next
`vsa index build` adds it (from the photos, without the CNN)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ImageError
from ..vision.exif import read_exif
from ..vision.images import DEFAULT_MAX_MEGAPIXELS, load
from ..vision.phash import fingerprint

META_VERSION = 2  # 2: sharpness relative to the photo's contrast
REBUILD_HINT = "run `vsa index build` to add them"


def describe(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> dict[str, Any]:
    """The "meta" record field of one photo; without fingerprint fields when it cannot be decoded."""
    meta: dict[str, Any] = {"v": META_VERSION}
    try:
        meta.update(fingerprint(load(path, max_megapixels)))
    except ImageError:
        pass
    meta.update(read_exif(path))
    return meta


def current(rec: dict[str, Any]) -> dict[str, Any] | None:
    """A record's meta when this version wrote it, else None (an older index)."""
    meta = rec.get("meta")
    return meta if isinstance(meta, dict) and meta.get("v") == META_VERSION else None


def to_array(meta: dict[str, Any]) -> np.ndarray:
    """For the build's work area, which stores arrays."""
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)


def from_array(a: np.ndarray) -> dict[str, Any]:
    return json.loads(a.tobytes().decode())
