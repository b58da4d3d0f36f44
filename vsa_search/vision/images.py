"""The one safe photo loader every command uses: EXIF orientation, RGB, a pixel cap against
decompression bombs, and typed errors for missing, truncated, corrupt or non-image files.
Reads phone photos as they come: HEIC/HEIF through pillow-heif, AVIF through Pillow, and decodes
large photos at a reduced scale when only a small copy is needed (the CNN sees 224 px)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import ImageCorruptError, ImageMissingError, ImageTooLargeError

PHOTO_KINDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "heic", "heif", "avif")
PHOTO_SUFFIXES = frozenset(f".{k}" for k in PHOTO_KINDS)
DEFAULT_MAX_MEGAPIXELS = 64.0
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # vsa serve: a larger upload is refused before it is decoded
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# Our own cap (checked on the header, before decoding) replaces PIL's global one, so that a
# user-raised --max-megapixels is not overruled by PIL's fixed 89 MP bomb limit.
Image.MAX_IMAGE_PIXELS = None


@functools.cache
def _read_heif() -> None:
    """HEIC/HEIF (most phones' default), registered on the first photo opened, not on import (a
    tenth of a second that `vsa search` need not pay). pillow-heif applies the file's rotation itself
    and reports orientation 1, so exif_transpose below never turns such a photo twice. AVIF is Pillow's own."""
    import pillow_heif

    pillow_heif.register_heif_opener()


@dataclass(frozen=True)
class Decoded:
    """A photo upright and RGB, possibly at a reduced scale, and the photo's own upright size:
    boxes are reported in the photo's coordinates, whatever scale was decoded."""

    image: Image.Image
    size: tuple[int, int]
    exif: Image.Exif | None = None  # the photo's EXIF, read from the same open file (none: no header)


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES


def load(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, file: BinaryIO | None = None) -> Image.Image:
    """Open a photo fully decoded, upright (EXIF) and RGB; the first frame of an animation. `file`: the
    photo already open (checked by its opener; `path` then only names it in messages)."""
    return decode(path, max_megapixels, file=file).image


def decode(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
           min_side: int | None = None, file: BinaryIO | None = None) -> Decoded:
    """Open a photo upright and RGB. With `min_side`, at the smallest integer reduction whose
    width and height both stay >= min_side: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    itself (never holding the full pixels), other formats are reduced right after decoding. `file`:
    the photo already open (checked by its opener; `path` then only names it in messages)."""
    _read_heif()
    path = Path(path)
    if file is None and not path.exists():
        raise ImageMissingError(f"{path}: no such file")
    if file is None and not path.is_file():
        raise ImageMissingError(f"{path}: not a file")
    limit = int(max_megapixels * 1_000_000)
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between 1x and 2x its own bomb limit; our own cap decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file if file is not None else path) as im:
                w, h = im.size
                if w * h > limit:
                    raise ImageTooLargeError(
                        f"{path}: {w}x{h} is {w * h / 1e6:.1f} megapixels, over the "
                        f"{max_megapixels:g} MP limit (raise --max-megapixels to allow it)"
                    )
                if getattr(im, "is_animated", False):
                    im.seek(0)
                if min_side:
                    im.draft("RGB", (min_side, min_side))  # JPEG only; a no-op for other formats
                im.load()
                exif = im.getexif()  # before any reduction: the photo's own header (PNG's eXIf follows the pixels)
                if min_side:
                    factor = min(im.size[0] // min_side, im.size[1] // min_side)
                    if factor >= 2:  # RGB first: reducing averages pixels, which a palette's indices are not
                        im = im.convert("RGB").reduce(factor)
                turned = exif.get(0x0112, 1) in _TRANSPOSED
                im = ImageOps.exif_transpose(im)
                return Decoded(im.convert("RGB"), (h, w) if turned else (w, h), exif)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{path}: {e}") from None
    except UnidentifiedImageError:
        raise ImageCorruptError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError, RuntimeError) as e:
        # PIL reports truncated data as OSError("image file is truncated ..."), pillow-heif a damaged
        # HEIC as ValueError("Invalid input: ...").
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageCorruptError(f"{path}: corrupt or truncated image ({msg})") from None
