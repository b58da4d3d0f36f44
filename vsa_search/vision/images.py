"""The one safe photo loader every command uses: EXIF orientation, RGB, a pixel cap against
decompression bombs, and typed errors for missing, truncated, corrupt or non-image files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import ImageCorruptError, ImageMissingError, ImageTooLargeError

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DEFAULT_MAX_MEGAPIXELS = 64.0
# Our own cap (checked on the header, before decoding) replaces PIL's global one, so that a
# user-raised --max-megapixels is not overruled by PIL's fixed 89 MP bomb limit.
Image.MAX_IMAGE_PIXELS = None


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES


def load(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, file: BinaryIO | None = None) -> Image.Image:
    """Open a photo fully decoded, upright (EXIF) and RGB; the first frame of an animation. `file`: the
    photo already open (checked by its opener; `path` then only names it in messages)."""
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
                # draft() lets JPEG decode at reduced scale; we still need all pixels, so only load.
                im.load()
                im = ImageOps.exif_transpose(im)
                return im.convert("RGB")
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{path}: {e}") from None
    except UnidentifiedImageError:
        raise ImageCorruptError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated data as OSError("image file is truncated ...").
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageCorruptError(f"{path}: corrupt or truncated image ({msg})") from None
