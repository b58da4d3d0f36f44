"""A contact sheet of search results: each hit's photo with the box every word matched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..core.atomic import atomic_path
from ..core.errors import ImageError, UsageError
from ..vision.draw import PALETTE, label_colour
from ..vision.images import load
from .likeness import LikeResult, shown_pairs
from .query import Result

NEGATIVE = (0, 0, 0)  # boxes of --minus words: black, a colour the palette never gives a word


def sheet_path(out: str | Path, query: str | None, photo: str | Path | None = None) -> Path:
    """Where the sheet of a query (words, or a photo) goes: `out` itself, or `out`/sheet-NAME.png
    when `out` is a folder. The folder it goes into must exist (a mistyped path is an error, not
    new folders)."""
    out = Path(out).expanduser()
    if out.is_dir():
        slug = re.sub(r"[^\w-]+", "-", Path(photo).stem if photo is not None else query or "").strip("-")[:60]
        out = out / f"sheet-{slug or 'query'}.png"
    if not out.parent.is_dir():
        raise UsageError(f"{out}: no folder {out.parent} to write the sheet into")
    return out


def contact_sheet(result: Result, out: str | Path, photo: str | Path | None = None, thumb: int = 320,
                  columns: int = 4) -> Path:
    """A PNG of the hits, each photo with the box every word matched, labelled by the word.
    For an image query (`photo` given) each tile is that photo with one sentence's boxes. For a
    --like query the first tile is the query photo: a box labelled rN there is its region N, and
    rN on a hit is the region that region matched best (its best pairs only).
    Returns the file written (see sheet_path: `out` may be a folder)."""
    out = sheet_path(out, result.query, photo)
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=12)
    colour_of: dict[str, tuple[int, int, int]] = {}
    tiles: list[Image.Image] = []
    cap_h = 36
    if isinstance(result, LikeResult):  # the query photo first, with the regions its pairs start from
        marks = {(f"r{m.query_region}", tuple(m.query_box)) for h in result.hits
                 for m in shown_pairs(getattr(h, "regions", []))}
        tiles.append(_tile(result.photo, sorted(marks, key=lambda m: int(m[0][1:])), "like this",
                           Path(result.photo).name, thumb, cap_h, font, small, colour_of))
    for rank, hit in enumerate(result.hits, 1):
        src = photo if photo is not None else hit.key
        marks = [(m.word, tuple(m.box)) for m in hit.words if m.box is not None]
        marks += [(f"r{m.query_region}", tuple(m.box)) for m in shown_pairs(getattr(hit, "regions", []))]
        name = hit.text if hit.text is not None else Path(hit.key).name
        tiles.append(_tile(src, marks, f"#{rank}  {hit.score:.3f}", name, thumb, cap_h, font, small, colour_of,
                           negative={m.word for m in hit.words if getattr(m, "negative", False)}))
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    head = 28
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, head + rows * (thumb + cap_h + 8) + 8), "#f4f4f4")
    d = ImageDraw.Draw(sheet)
    title = f"{result.query}" + (f"   (ignored: {', '.join(result.ignored)})" if result.ignored else "")
    if isinstance(result, LikeResult):
        title = f"like {Path(result.photo).name}" + (f", steered by: {title}" if result.text else "")
    d.text((8, 6), _fit(d, title, font, sheet.width - 16), fill="black", font=font)
    for j, tile in enumerate(tiles):
        sheet.paste(tile, (8 + (j % columns) * (thumb + 8), head + (j // columns) * (thumb + cap_h + 8)))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


def _tile(src: str | Path, marks: list[tuple[str, tuple[int, ...]]], title: str, name: str, thumb: int, cap_h: int,
          font: Any, small: Any, colour_of: dict[str, tuple[int, int, int]],
          negative: set[str] | None = None) -> Image.Image:
    """One photo with its labelled boxes (one box per region, labelled by every mark on it); words in
    `negative` (a --minus term) are drawn in NEGATIVE, whatever colour they would take."""
    try:
        im = load(src)
    except ImageError:
        im = None
    tile = Image.new("RGB", (thumb, thumb + cap_h), "white")
    draw = ImageDraw.Draw(tile)
    if im is None:
        draw.rectangle([0, 0, thumb - 1, thumb - 1], fill="#dddddd")
        draw.text((8, thumb // 2), "photo not readable", fill="black", font=font)
    else:
        scale = thumb / max(im.size)
        small_im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        ox, oy = (thumb - small_im.width) // 2, (thumb - small_im.height) // 2
        tile.paste(small_im, (ox, oy))
        by_box: dict[tuple[int, ...], list[str]] = {}
        for label, box in marks:
            by_box.setdefault(box, []).append(label)
        for box, words in by_box.items():
            if negative and words[0] in negative:
                colour = NEGATIVE
            else:
                colour = colour_of.setdefault(words[0], PALETTE[len(colour_of) % len(PALETTE)])
            x0, y0, x1, y1 = (ox + round(box[0] * scale), oy + round(box[1] * scale),
                              ox + round(box[2] * scale) - 1, oy + round(box[3] * scale) - 1)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
            label = _fit(draw, " ".join(dict.fromkeys(words)), font, thumb - 6)
            tw = draw.textlength(label, font=font)
            lx = max(0, min(x0, thumb - tw - 6))  # keep the label inside the tile
            ly = max(0, min(y0, thumb - 18))
            draw.rectangle([lx, ly, lx + tw + 6, ly + 17], fill=colour)
            draw.text((lx + 3, ly + 1), label, fill=label_colour(colour), font=font)
    draw.text((4, thumb + 3), title, fill="black", font=font)
    draw.text((4, thumb + 19), _fit(draw, name, small, thumb - 8), fill="#333333", font=small)
    return tile


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
