"""Pictures: labelled boxes drawn on a photo, saved atomically."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..core.atomic import atomic_path
from ..core.errors import UsageError

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def label_colour(c: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black text on the light palette colours, white on the dark ones."""
    return (0, 0, 0) if sum(c) > 380 else (255, 255, 255)


def draw_boxes(image: Image.Image, labelled: list[tuple[tuple[int, int, int, int], str]],
               min_side: int = 480) -> Image.Image:
    """A copy of `image` with each (box, label) drawn in its own colour, the label on a filled tab
    at the box's top-left. Small photos are enlarged first (to `min_side`) so labels stay legible."""
    scale = max(1.0, min_side / min(image.size))
    im = image.convert("RGB")
    if scale > 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    else:
        im = im.copy()
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(12, round(min(im.size) / 30)))
    width = max(2, round(min(im.size) / 160))
    rects = []
    for k, (box, _) in enumerate(labelled):
        inset = k % 4 * width  # nested boxes (the full image among them) stay distinguishable
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        rects.append((x0 + inset, y0 + inset, max(x0 + inset, x1 - 1 - inset), max(y0 + inset, y1 - 1 - inset)))
        d.rectangle(rects[-1], outline=PALETTE[k % len(PALETTE)], width=width)
    tabs: list[tuple[int, int, int, int]] = []
    for k, ((_, label), (x0, y0, _, _)) in enumerate(zip(labelled, rects)):
        c = PALETTE[k % len(PALETTE)]
        left, top, right, bottom = d.textbbox((0, 0), label, font=font)
        w, h = right - left + 6, bottom - top + 6
        tx, ty = min(x0, max(0, im.width - w)), y0
        # Labels of boxes sharing a corner would overwrite each other: stack them downwards.
        while any(tx < q[2] and q[0] < tx + w and ty < q[3] and q[1] < ty + h for q in tabs):
            ty += h
        ty = min(ty, max(0, im.height - h))
        tabs.append((tx, ty, tx + w, ty + h))
        d.rectangle(tabs[-1], fill=c)
        d.text((tx + 3 - left, ty + 3 - top), label, fill=label_colour(c), font=font)
    return im


def save_image(im: Image.Image, path: str | Path) -> Path:
    """Save atomically, format from the suffix."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            im.save(tmp)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: cannot write image ({e})") from None
    return path
