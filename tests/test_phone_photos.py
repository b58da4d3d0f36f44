"""Phone photos as they come: HEIC read upright, large JPEGs decoded at the scale the CNN needs
with boxes still in the photo's own coordinates, and damaged HEIC files skipped in one line."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image
from tiny_align import tiny_model

from vsa_search import index as ix
from vsa_search.core.errors import ImageCorruptError
from vsa_search.index.plan import scan
from vsa_search.models.alignment import load_align
from vsa_search.vision import images, regions


def _save_heic(im: Image.Image, path: Path, **kw: object) -> Path:
    """Written with pillow-heif's own API, so that reading it relies on images registering HEIF itself."""
    pillow_heif.from_pillow(im).save(path, **kw)
    return path


def _big_jpeg(src: Path, out: Path, size: tuple[int, int] = (2016, 1512)) -> Path:
    """A real photo upscaled to a phone-like size."""
    Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(out, quality=92)
    return out


def test_heic_with_exif_orientation_is_read_upright(tmp_path: Path, sample_photos: list[Path]) -> None:
    src = Image.open(sample_photos[0]).convert("RGB")
    w, h = src.size
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view", as a phone held upright writes it
    p = tmp_path / "IMG_0001.HEIC"
    _save_heic(src, p, exif=exif.tobytes(), quality=90)
    for d in (images.decode(p), images.decode(p, min_side=50)):
        assert d.size == (h, w) and d.image.mode == "RGB"
    up = images.load(p)
    assert up.size == (h, w)
    # Upright: the photo's left column is now its top row (90 degrees clockwise), not its mirror.
    want = np.asarray(src.transpose(Image.Transpose.ROTATE_270), np.float32)
    assert np.abs(np.asarray(up, np.float32) - want).mean() < 12
    assert np.abs(np.asarray(up, np.float32) - want[::-1, ::-1]).mean() > 30


def test_walker_picks_up_heic_heif_and_avif(tmp_path: Path) -> None:
    im = Image.new("RGB", (64, 48), (200, 30, 30))
    _save_heic(im, tmp_path / "a.heic")
    _save_heic(im, tmp_path / "b.HEIF")
    im.save(tmp_path / "c.avif")
    (tmp_path / "d.txt").write_text("not a photo")
    assert [Path(p).name for p, _, _ in scan([tmp_path])] == ["a.heic", "b.HEIF", "c.avif"]
    assert all(images.load(tmp_path / n).size == (64, 48) for n in ("a.heic", "b.HEIF", "c.avif"))


def test_draft_decode_of_a_large_jpeg_keeps_original_coordinates(tmp_path: Path, sample_photos: list[Path],
                                                                 tiny_region_encoder) -> None:
    cfg = tiny_region_encoder.cfg
    p = _big_jpeg(sample_photos[1], tmp_path / "big.jpg")
    full = images.decode(p)
    small = images.decode(p, min_side=regions.decode_side(cfg))
    assert small.size == full.size == (2016, 1512)
    assert min(small.image.size) >= regions.decode_side(cfg) and small.image.width <= 2016 // 4  # decoded at 1/4
    # Boxes come in the photo's own coordinates: the deterministic grid is the same box for box,
    # and selective search's boxes span the original frame.
    grid = replace(cfg, proposals="grid")
    np.testing.assert_array_equal(regions.propose(small.image, grid, small.size), regions.propose(full.image, grid))
    boxes = regions.propose(small.image, cfg, small.size)
    assert (boxes[0] == [0, 0, 2016, 1512]).all()
    assert (boxes[:, 2] <= 2016).all() and (boxes[:, 3] <= 1512).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    # The same boxes give nearly the same features from the reduced decode as from the full one;
    # boxes taken in the reduced copy's coordinates would not.
    f_full = tiny_region_encoder.encode([full.image], [boxes])[0]
    cos = _cosine(f_full, tiny_region_encoder.encode([small.image], [boxes], [small.size])[0])
    assert cos.min() > 0.98, cos
    wrong = tiny_region_encoder.encode([small.image], [boxes])[0]  # boxes read as reduced pixels
    assert _cosine(f_full[1:], wrong[1:]).mean() < 0.9


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; a zero row (a box outside the image pools nothing) counts as 0."""
    n = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(n, 1e-12)


def test_extract_reports_boxes_in_original_coordinates(tmp_path: Path, sample_photos: list[Path],
                                                       tiny_region_encoder) -> None:
    p = _big_jpeg(sample_photos[2], tmp_path / "big.jpg", (1512, 2016))
    [(path, got)] = list(regions.extract([p], tiny_region_encoder, batch_size=2))
    assert path == p and not isinstance(got, str)
    assert (got.boxes[0] == [0, 0, 1512, 2016]).all() and got.boxes[:, 2:].max(0).tolist() == [1512, 2016]


def test_corrupt_heic_is_one_clean_skip_line(tmp_path: Path, sample_photos: list[Path], tiny_region_encoder) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(sample_photos[0], photos / sample_photos[0].name)
    _save_heic(Image.open(sample_photos[1]).convert("RGB"), photos / "good.heic")
    data = (photos / "good.heic").read_bytes()
    (photos / "cut.heic").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ImageCorruptError, match=r"cut\.heic: corrupt or truncated image \(Invalid input"):
        images.load(photos / "cut.heic")
    model = load_align(tiny_model(tmp_path / "tiny.pt"))
    r = ix.build_photos([photos], model, tmp_path / "idx", encoder=tiny_region_encoder, batch_size=2)
    assert r.photos == 2 and r.encoded == 2  # the JPEG and the good HEIC
    [(path, why)] = r.skipped.items()
    assert Path(path).name == "cut.heic" and why.startswith(str(photos / "cut.heic") + ": corrupt")
    assert "\n" not in why


def test_heic_is_read_whatever_its_name(tmp_path: Path) -> None:
    assert images.is_photo(Path("x.HEIC")) and images.is_photo(Path("x.avif"))
    _save_heic(Image.new("RGB", (64, 48), (10, 200, 10)), tmp_path / "renamed.jpg")
    im = images.load(tmp_path / "renamed.jpg")  # opened by content, not by name
    assert im.size == (64, 48) and im.getpixel((5, 5))[1] > 150


def test_reduced_decode_of_a_palette_png_is_upright_and_faithful(tmp_path: Path, sample_photos: list[Path]) -> None:
    src = Image.open(sample_photos[1]).convert("RGB").resize((1200, 900))
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to view"
    src.quantize(64).save(tmp_path / "pal.png", exif=exif)
    full, small = images.decode(tmp_path / "pal.png"), images.decode(tmp_path / "pal.png", min_side=224)
    assert full.size == small.size == (900, 1200) and small.image.size == (225, 300)  # reduced by 4, upright
    # Pixels averaged, not palette indices: the reduced copy looks like the full photo scaled down.
    diff = np.abs(np.asarray(full.image.resize(small.image.size), np.float32) - np.asarray(small.image, np.float32))
    assert diff.mean() < 4
