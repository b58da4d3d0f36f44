"""The date taken, the camera and the GPS position from a photo's EXIF, for metadata filters. A field
that is absent or unreadable is left out: a photo without EXIF gives {}."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_ORIGINAL, _DATE_DIGITIZED, _DATE_TIME = 36867, 36868, 306
_MAKE, _MODEL = 271, 272
_DATE = re.compile(r"\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")


def parse_exif_date(text: Any) -> str | None:
    """'2021:07:04 18:30:00' -> '2021-07-04T18:30:00'; None for a blank or impossible date
    (cameras write '0000:00:00 00:00:00' when their clock was never set)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        return None
    m = _DATE.match(text.strip("\x00"))
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    try:
        return datetime(y, mo, d, h, mi, s).isoformat()
    except ValueError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 \t\r\n") if value is not None else ""


def camera_of(make: Any, model: Any) -> str | None:
    """'Canon' + 'Canon EOS 80D' -> 'Canon EOS 80D' (the model often repeats the make)."""
    make, model = _text(make), _text(model)
    if make and model.lower().startswith(make.lower().split()[0]):
        return model
    return " ".join(p for p in (make, model) if p) or None


def _degrees(dms: Any, ref: Any) -> float | None:
    try:
        parts = [float(x) for x in dms] if isinstance(dms, tuple | list) else [float(dms)]
        value = sum(p / 60**i for i, p in enumerate(parts[:3]))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value):
        return None
    return -value if _text(ref).upper() in ("S", "W") else value


def gps_of(gps: dict[int, Any]) -> list[float] | None:
    """[lat, lon] in degrees from an EXIF GPS block, or None when missing or out of range."""
    if 2 not in gps or 4 not in gps:
        return None
    lat, lon = _degrees(gps[2], gps.get(1)), _degrees(gps[4], gps.get(3))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return [round(lat, 6), round(lon, 6)]


def read_exif(path: str | Path, file: BinaryIO | None = None) -> dict[str, Any]:
    """{"taken": ISO date and time, "camera": "Make Model", "gps": [lat, lon]}, each only when the
    photo's EXIF has it. Reads the header only, no pixels."""
    try:
        with Image.open(file if file is not None else path) as im:
            return exif_fields(im.getexif())
    except Exception:  # EXIF is a best effort: a photo that decodes is indexed whatever its header says
        return {}


def exif_fields(exif: Image.Exif) -> dict[str, Any]:
    """read_exif's fields from EXIF already read (images.decode keeps the decoded photo's)."""
    out: dict[str, Any] = {}
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        gps = exif.get_ifd(_GPS_IFD)
    except Exception:  # a damaged IFD: the fields are a best effort, as above
        return out
    taken = next((d for d in (parse_exif_date(sub.get(_DATE_ORIGINAL)), parse_exif_date(sub.get(_DATE_DIGITIZED)),
                              parse_exif_date(exif.get(_DATE_TIME))) if d), None)
    if taken:
        out["taken"] = taken
    camera = camera_of(exif.get(_MAKE), exif.get(_MODEL))
    if camera:
        out["camera"] = camera
    position = gps_of(gps) if gps else None
    if position:
        out["gps"] = position
    return out
