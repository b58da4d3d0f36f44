"""What a photo build stores beside each photo's vectors for duplicate finding and metadata filters:
the record field "meta" = {"v", "phash", "sharp", "width", "height"} plus "taken", "camera"
and "gps" when the photo's EXIF has them. Indexes built before it lack the field; the next
`vsa index build` adds it (from the photos, without the CNN). A build measures each photo from the
decode its CNN features come from (regions.Prepared): one decode per photo, at the extractor's scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import ImageError
from ..vision.exif import exif_fields, read_exif
from ..vision.images import DEFAULT_MAX_MEGAPIXELS, decode
from ..vision.phash import fingerprint

if TYPE_CHECKING:  # regions loads torch and the CNN: a search reads this module without them
    from ..vision.regions import Prepared

META_VERSION = 2  # 2: sharpness relative to the photo's contrast
REBUILD_HINT = "run `vsa index build` to add them"


def describe(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
             min_side: int | None = None) -> dict[str, Any]:
    """The "meta" record field of one photo; without fingerprint fields when it cannot be decoded.
    `min_side`: decode at the scale the build's extractor does (regions.decode_side), as of_prepared."""
    try:
        d = decode(path, max_megapixels, min_side=min_side)
    except ImageError:
        return {"v": META_VERSION, **read_exif(path)}
    return _meta(d.image, d.size, d.exif)


def of_prepared(photo: Prepared) -> dict[str, Any]:
    """The "meta" record field from the decode a build's CNN features came from (no second decode):
    the hashes of the (maybe reduced) copy, the photo's own size, the EXIF of the same open file.
    A photo reduced at decoding hashes as any copy of it at another size does (dupes' threshold)."""
    return _meta(photo.image, photo.size, photo.exif)  # type: ignore[arg-type]


def _meta(image: Any, size: tuple[int, int], exif: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"v": META_VERSION, **fingerprint(image)}
    meta["width"], meta["height"] = size  # the photo's, not the reduced copy's
    meta.update(exif_fields(exif) if exif is not None else {})
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
