from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from vsa_search.core.errors import ImageCorruptError, ImageMissingError, ImageTooLargeError
from vsa_search.vision import images


def test_loads_real_photo_as_rgb(sample_photos: list[Path]) -> None:
    im = images.load(sample_photos[0])
    assert im.mode == "RGB"
    assert min(im.size) > 50


def test_exif_orientation_is_applied(tmp_path: Path, sample_photos: list[Path]) -> None:
    src = Image.open(sample_photos[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    p = tmp_path / "rotated.jpg"
    src.save(p, exif=exif)
    w, h = src.size
    assert images.load(p).size == (h, w)


def test_png_with_alpha_and_gif_first_frame(tmp_path: Path) -> None:
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(tmp_path / "a.png")
    assert images.load(tmp_path / "a.png").mode == "RGB"
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:])
    im = images.load(tmp_path / "b.gif")
    assert im.size == (20, 10) and im.getpixel((5, 5))[0] > 200  # first frame is red


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageMissingError, match="no such file"):
        images.load(tmp_path / "nope.jpg")


def test_truncated_jpeg(tmp_path: Path, sample_photos: list[Path]) -> None:
    data = sample_photos[0].read_bytes()
    p = tmp_path / "truncated.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageCorruptError, match="truncated"):
        images.load(p)


def test_corrupt_and_non_image(tmp_path: Path) -> None:
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 8)
    (tmp_path / "notes.jpg").write_text("not a photo at all")
    for name in ("garbage.jpg", "notes.jpg"):
        with pytest.raises(ImageCorruptError):
            images.load(tmp_path / name)


def test_megapixel_cap(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(buf, "PNG")
    p = tmp_path / "big.png"
    p.write_bytes(buf.getvalue())
    with pytest.raises(ImageTooLargeError, match="2.0 megapixels"):
        images.load(p, max_megapixels=1.0)
    assert images.load(p, max_megapixels=3.0).size == (2000, 1000)
