"""`vsa dupes`: groups of near-duplicate photos in an index, with the one to keep. Never deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import index as ix
from ..index import dupes as dp
from ..index.filters import MetaFilter
from .common import AfterOpt, BeforeOpt, CameraOpt, KmOpt, NearOpt, filter_notes, out, print_json


def dupes_cmd(
    index: Annotated[str, typer.Option("--index", help="Index name (or path).")] = ix.DEFAULT_NAME,
    threshold: Annotated[float, typer.Option("--threshold", help="Similarity (0-1] a pair needs: lower finds "
                                             "looser copies and more false pairs.")] = dp.DEFAULT_THRESHOLD,
    json_out: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    sheets: Annotated[Path | None, typer.Option("--sheets", help="Write a contact sheet per group into this "
                                                "folder (group-001.png, ...), the photo to keep first.")] = None,
    after: AfterOpt = None, before: BeforeOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    km: KmOpt = None,
) -> None:
    """Groups of near-duplicates (recompressed, resized, cropped, turned, re-exposed copies, bursts),
    each with a suggested photo to keep: the largest, then the sharpest. Nothing is deleted."""
    where = MetaFilter.parse(after, before, camera, near, km)
    result = dp.find(index, threshold, where)
    written = dp.group_sheets(result, sheets) if sheets is not None else []
    filter_notes(result.notes)
    if json_out:
        d = result.to_dict()
        if sheets is not None:
            for g, p in zip(d["groups"], written, strict=True):
                g["sheet"] = str(p)
        print_json(d)
        return
    if not result.groups:
        out.print(f"no near-duplicates among {result.photos} photos (threshold {threshold:g})")
    else:
        out.print(f"{len(result.groups)} groups of near-duplicates among {result.photos} photos "
                  f"(threshold {threshold:g}); nothing is deleted", markup=False)
    for n, g in enumerate(result.groups, 1):
        out.print(f"\ngroup {n}: {len(g.photos)} photos, keep {g.keep} ({g.why})", markup=False)
        for p in g.photos:
            mark = "keep" if p.path == g.keep else "    "
            turn = f"  turned {p.rotation}" if p.rotation else ""
            out.print(f"  {mark}  {p.similarity:.3f}  {p.width}x{p.height}  {p.path}{turn}", markup=False)
        if written:
            out.print(f"  sheet: {written[n - 1]}", markup=False)
