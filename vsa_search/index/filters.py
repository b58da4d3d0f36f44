"""Metadata filters over any result list: the date taken (--after/--before), the camera (--camera) and
the place (--near LAT,LON --km N), read from the EXIF the index stored with each photo (photometa).

A photo that lacks what a filter asks about (no date under a date filter, no position under --near)
cannot pass it, but it is never dropped silently: FilterReport counts such photos in the index, and
the CLI, the API and the page say how many there are."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from ..core.errors import UsageError
from .photometa import REBUILD_HINT, current
from .store import FragmentIndex

T = TypeVar("T")
DEFAULT_KM = 10.0
EARTH_KM = 6371.0088  # mean radius


@dataclass(frozen=True)
class MetaFilter:
    after: date | None = None  # taken on this day or later
    before: date | None = None  # taken on this day or earlier
    camera: str | None = None  # a case-insensitive part of "Make Model"
    near: tuple[float, float] | None = None  # (lat, lon) in degrees
    km: float = DEFAULT_KM  # radius around `near`

    @classmethod
    def parse(cls, after: str | None = None, before: str | None = None, camera: str | None = None,
              near: str | None = None, km: float | None = None) -> MetaFilter:
        """From the command line's or the page's text; bad input is one UsageError line."""
        a, b = _day(after, "--after"), _day(before, "--before")
        if a and b and a > b:
            raise UsageError(f"--after {a} is later than --before {b}: no day is both")
        if km is not None and near is None:
            raise UsageError("--km needs --near LAT,LON")
        if km is not None and not (math.isfinite(km) and km > 0):
            raise UsageError(f"--km must be a distance above 0 (got {km:g})")
        cam = camera.strip() if camera is not None else None
        if camera is not None and not cam:
            raise UsageError("--camera needs some text (a part of the camera's make or model)")
        return cls(a, b, cam, _place(near) if near is not None else None, km if km is not None else DEFAULT_KM)

    @property
    def active(self) -> bool:
        return bool(self.after or self.before or self.camera or self.near)

    @property
    def by_date(self) -> bool:
        return bool(self.after or self.before)

    def accepts(self, meta: dict[str, Any] | None) -> bool:
        if not self.active:
            return True
        if meta is None:
            return False
        if self.by_date:
            taken = meta.get("taken")
            if not taken:
                return False
            day = date.fromisoformat(taken[:10])
            if (self.after and day < self.after) or (self.before and day > self.before):
                return False
        if self.camera and self.camera.lower() not in (meta.get("camera") or "").lower():
            return False
        if self.near:
            gps = meta.get("gps")
            if not gps or distance_km(self.near, (gps[0], gps[1])) > self.km:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"after": self.after.isoformat() if self.after else None,
                "before": self.before.isoformat() if self.before else None, "camera": self.camera,
                "near": list(self.near) if self.near else None, "km": self.km if self.near else None}


def _day(text: str | None, flag: str) -> date | None:
    if text is None or text == "":
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a date (YYYY-MM-DD)") from None


def _place(text: str) -> tuple[float, float]:
    parts = text.replace(" ", "").split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--near: {text!r} is not a place: give LAT,LON in degrees, e.g. 48.8584,2.2945") from None
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise UsageError(f"--near: latitude {lat:g} is out of range (-90 to 90)")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise UsageError(f"--near: longitude {lon:g} is out of range (-180 to 180)")
    return lat, lon


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass
class FilterReport:
    """What a filter could not judge, counted over the index: photos without a date (under a date
    filter), without a camera (--camera), without a position (--near), and photos whose record has
    no EXIF fields at all because the index was built before they were stored."""

    filter: MetaFilter
    photos: int = 0
    no_date: int = 0
    no_camera: int = 0
    no_gps: int = 0
    no_meta: int = 0
    kept: int = 0  # results that passed
    dropped: int = 0  # results that did not
    metas: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)  # path -> stored meta

    def exif_of(self, path: str) -> dict[str, Any]:
        """The EXIF fields a filter reads, of one photo (for the hits a filter kept)."""
        m = self.metas.get(path) or {}
        return {k: m.get(k) for k in ("taken", "camera", "gps")}

    def to_dict(self) -> dict[str, Any]:
        return {**self.filter.to_dict(), "photos": self.photos, "no_date": self.no_date,
                "no_camera": self.no_camera, "no_gps": self.no_gps, "no_meta": self.no_meta,
                "kept": self.kept, "dropped": self.dropped}

    def notes(self) -> list[str]:
        """One line for each kind of photo the filter had to leave out unjudged."""
        f, out = self.filter, []
        if f.by_date and self.no_date:
            out.append(f"{self.no_date} of {self.photos} photos have no date taken (EXIF): the date filter "
                       "leaves them out")
        if f.camera and self.no_camera:
            out.append(f"{self.no_camera} of {self.photos} photos name no camera (EXIF): --camera leaves them out")
        if f.near and self.no_gps:
            out.append(f"{self.no_gps} of {self.photos} photos have no GPS position (EXIF): --near leaves them out")
        if f.active and self.no_meta:
            out.append(f"{self.no_meta} photos were indexed before EXIF was stored: {REBUILD_HINT}")
        return out


def index_meta(ix: FragmentIndex) -> dict[str, dict[str, Any] | None]:
    """Photo path -> its stored meta (None for a record from before photometa)."""
    return {rec["key"]: current(rec) for rec in ix.records()}


def report_for(metas: Iterable[dict[str, Any] | None], f: MetaFilter) -> FilterReport:
    r = FilterReport(f)
    for m in metas:
        r.photos += 1
        if m is None:
            r.no_meta += 1
            continue
        r.no_date += not m.get("taken")
        r.no_camera += not m.get("camera")
        r.no_gps += not m.get("gps")
    return r


def apply(items: list[T], key_of: Callable[[T], str], metas: dict[str, dict[str, Any] | None], f: MetaFilter,
          report: FilterReport | None = None) -> list[T]:
    """The items (hits, photos: anything with a photo path) whose photo passes `f`, in order."""
    kept = [it for it in items if f.accepts(metas.get(key_of(it)))]
    if report is not None:
        report.kept += len(kept)
        report.dropped += len(items) - len(kept)
    return kept


def search_filtered(ix: FragmentIndex, f: MetaFilter, k: int, run: Callable[[int], Any]) -> tuple[Any, FilterReport]:
    """Run a search (`run(k)` -> a result with .hits, e.g. a text or --like search) and keep the hits
    that pass `f`: the search is asked for more (x4 each time) until k pass or the index is exhausted."""
    if not f.active:
        return run(k), FilterReport(f)
    metas = index_meta(ix)
    report = report_for(metas.values(), f)
    report.metas = metas
    want = min(len(ix), max(4 * k, 64))
    while True:
        result = run(want)
        kept = apply(result.hits, lambda h: h.key, metas, f)
        if len(kept) >= k or want >= len(ix) or len(result.hits) < want:
            break
        want = min(len(ix), want * 4)
    report.kept, report.dropped = min(len(kept), k), len(result.hits) - len(kept)
    result.hits = kept[:k]
    return result, report
