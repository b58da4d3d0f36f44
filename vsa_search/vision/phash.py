"""Perceptual fingerprints of a decoded photo, for near-duplicate finding: a DCT hash (pHash, 8 bytes)
and a sharpness score (variance of the Laplacian).

The pHash keeps the sign of the 8x8 lowest DCT frequencies of the 32x32 grey photo (the DC term's bit
is always 0). Signs, not the usual comparison with the median, because a 90-degree turn of the photo
only transposes those coefficients and flips the sign of the odd rows (C'(u,v) = (-1)^u C(v,u)):
the hashes of all four rotations follow from the stored 8 bytes, without the photo."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

HASH_SIZE = 32  # side of the grey thumbnail the DCT runs on
SHARP_SIDE = 512  # sharpness is measured at this longest side, so photos of any size compare


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix(HASH_SIZE)
# Bit masks for a 90-degree turn: bit (u, v) of the turned photo is bit (v, u), flipped for odd u.
_ODD_ROWS = np.repeat((np.arange(8) % 2 == 1)[:, None], 8, axis=1)
_ODD_ROWS[0, 0] = False


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), np.float64)


def phash_bits(image: Image.Image) -> np.ndarray:
    """(8, 8) bool: the signs of the lowest DCT frequencies (DC bit always False)."""
    g = _grey(image, (HASH_SIZE, HASH_SIZE))
    c = (_DCT @ g @ _DCT.T)[:8, :8]
    bits = c > 0
    bits[0, 0] = False
    return bits


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey photo at SHARP_SIDE over the variance of the grey
    levels: higher is sharper. The ratio keeps a brighter or more contrasted copy from looking sharper."""
    scale = SHARP_SIDE / max(image.size)
    size = (max(3, round(image.width * scale)), max(3, round(image.height * scale)))
    g = _grey(image, size)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var() / max(g.var(), 1e-6))


def to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def from_int(value: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(value.to_bytes(8, "big"), np.uint8)).astype(bool).reshape(8, 8)


def rotations(phash: int) -> list[int]:
    """The pHash of the photo turned by 0, 90, 180 and 270 degrees, from its stored hash."""
    out = [phash]
    bits = from_int(phash)
    for _ in range(3):
        bits = bits.T ^ _ODD_ROWS
        out.append(to_int(bits))
    return out


def fingerprint(image: Image.Image) -> dict[str, Any]:
    """What the index stores per photo for duplicate finding: the pHash as 16 hex digits, the
    sharpness and the decoded size."""
    return {"phash": f"{to_int(phash_bits(image)):016x}", "sharp": round(sharpness(image), 4),
            "width": image.width, "height": image.height}


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
