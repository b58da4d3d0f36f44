"""Region concepts: each region's ImageNet classes, the region side of the concept bridge
(vsa_search/bridge).

The CNN that features every region is an ImageNet classifier: a region feature (RoIAlign of
`forward_features`' map) is exactly what the backbone's classifier head reads, so a region's
class probabilities are softmax(head(feature)), derivable from stored features at any time.
Per region only the top K classes are kept (ids uint16, probabilities float16)."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only for the classifier head (index builds): search needs none
    import torch

TOP_K = 10  # classes kept per region: 40 bytes per region (see topk_bytes)


@functools.lru_cache(maxsize=4)
def _head(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .regions import load_backbone

    fc = load_backbone(backbone).get_classifier()
    return fc.weight.detach().float().clone(), fc.bias.detach().float().clone()


def region_probs(features: np.ndarray, backbone: str = "tf_efficientnet_lite0") -> np.ndarray:
    """(R, D) region features -> (R, 1000) ImageNet class probabilities from the backbone's own head."""
    import torch

    w, b = _head(backbone)
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    with torch.inference_mode():
        return torch.softmax(x @ w.T + b, dim=-1).numpy()


def topk(probs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per region: ids (R, k) uint16 and probabilities (R, k) float16,
    most probable first."""
    k = min(k, probs.shape[1])
    ids = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    p = np.take_along_axis(probs, ids, 1)
    order = np.argsort(-p, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1).astype(np.uint16), np.take_along_axis(p, order, 1).astype(np.float16)


@dataclass
class Concepts:
    """One photo's regions' top classes."""

    ids: np.ndarray  # (R, K) uint16
    probs: np.ndarray  # (R, K) float16

    def to_bytes(self) -> bytes:
        """4-byte header (R, K as uint16), then ids, then probabilities: 4·K bytes per region."""
        r, k = self.ids.shape
        return struct.pack("<HH", r, k) + np.ascontiguousarray(self.ids, "<u2").tobytes() \
            + np.ascontiguousarray(self.probs, "<f2").tobytes()

    @classmethod
    def from_bytes(cls, b: bytes) -> Concepts:
        r, k = struct.unpack_from("<HH", b)
        n = r * k
        ids = np.frombuffer(b, "<u2", n, 4).reshape(r, k)
        probs = np.frombuffer(b, "<f2", n, 4 + 2 * n).reshape(r, k)
        return cls(ids, probs)

    def __len__(self) -> int:
        return len(self.ids)


def from_features(features: np.ndarray, k: int = TOP_K, backbone: str = "tf_efficientnet_lite0") -> Concepts:
    return from_probs(region_probs(features, backbone), k)


def from_probs(probs: np.ndarray, k: int = TOP_K) -> Concepts:
    """Concepts of regions' (R, 1000) class probabilities (region_probs, or cnn.py's head)."""
    ids, p = topk(probs, k)
    return Concepts(ids, p)


def topk_bytes(regions: int, k: int = TOP_K) -> int:
    """Bytes one photo's concepts take in a store (before LMDB's own per-key overhead)."""
    return 4 + 4 * k * regions
