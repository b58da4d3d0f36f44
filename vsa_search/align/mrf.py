"""Sentence fragments to image regions (paper Sec. 3.1.4).

Each word j of a sentence picks a region a_j; the assignment maximises

    E(a) = Σ_j unary(j, a_j) + β · Σ_j [a_j == a_{j+1}],   unary(j, i) = v_i · s_j

a chain MRF solved exactly by Viterbi dynamic programming. β trades per-word accuracy for longer
fragments: β = 0 is each word's own best region, a large β puts the whole sentence on one region.
Consecutive words on one region form a fragment; fragments of training sentences become the
(region, snippet) pairs that the region caption generator learns from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError

# In units of one word's v_i · s_t: cosine for the shipped model, where a word's best two regions differ by
# ~0.017 (median, 200 dev photos). On the 5,000 dev sentences (`vsa align export --split dev --beta B --json`):
# β = 0 gives 5.9 fragments of 1.9 words per sentence, 0.02 gives 3.9 of 2.8, 0.1 gives 2.3 of 4.8, 1.0 gives
# 1.1 of 9.8 (nearly the whole sentence on one region).
DEFAULT_BETA = 0.02

# --------------------------------------------------------------------------- the MRF


def check_beta(beta: float) -> float:
    beta = float(beta)
    # A negative β would reward switching regions; the DP below relies on β >= 0.
    if not np.isfinite(beta) or beta < 0:
        raise UsageError(f"beta must be a finite number >= 0, got {beta:g}")
    return beta


def align_words(unary: np.ndarray | torch.Tensor, beta: float) -> np.ndarray:
    """Exact MAP assignment of the chain MRF: unary (N, R) -> region per word (N,) int64.

    Viterbi in O(N·R): with a reward only for staying, the best way into region r is either the
    best previous state overall (switching, no bonus) or r itself plus β, so no R×R table is needed.
    Ties go to the lowest region index (and to staying), which keeps results deterministic."""
    beta = check_beta(beta)
    u = unary.detach().cpu().numpy() if isinstance(unary, torch.Tensor) else np.asarray(unary)
    u = u.astype(np.float64)
    if u.ndim != 2:
        raise ValueError(f"unary must be (N, R), got shape {u.shape}")
    n, r = u.shape
    if n == 0:
        return np.zeros(0, np.int64)
    if r == 0:
        raise ValueError("no regions to align to")
    dp = u[0].copy()  # (R,): best energy of words 0..j ending on each region
    back = np.zeros((n, r), np.int64)  # back[j, r]: region of word j-1 on the best path to (j, r)
    regions = np.arange(r)
    for j in range(1, n):
        best_prev = int(np.argmax(dp))
        stay = dp + beta  # (R,)
        keep = stay >= dp[best_prev]
        back[j] = np.where(keep, regions, best_prev)
        dp = u[j] + np.where(keep, stay, dp[best_prev])
    a = np.empty(n, np.int64)
    a[-1] = int(np.argmax(dp))
    for j in range(n - 1, 0, -1):
        a[j - 1] = back[j, a[j]]
    return a


def energy(unary: np.ndarray, assignment: np.ndarray, beta: float) -> float:
    """E(a) of one assignment (what `align_words` maximises)."""
    u = np.asarray(unary, np.float64)
    a = np.asarray(assignment)
    return float(u[np.arange(len(a)), a].sum() + beta * np.sum(a[1:] == a[:-1]))


# --------------------------------------------------------------------------- fragments


@dataclass(frozen=True)
class Fragment:
    text: str  # the fragment's words, space-joined (tokenized: lowercase alphanumerics)
    region: int  # index into the image's regions (0 = the full image)
    box: tuple[int, int, int, int]  # xyxy pixels
    score: float  # mean v_i · s_t over the fragment's words
    start: int  # word span [start, end) in the tokenized sentence
    end: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


def fragments(tokens: list[str], assignment: np.ndarray, boxes: np.ndarray, unary: np.ndarray) -> list[Fragment]:
    """Group runs of consecutive words on the same region into fragments, in sentence order."""
    if len(tokens) != len(assignment):
        raise ValueError(f"{len(tokens)} tokens but {len(assignment)} assigned regions")
    u = np.asarray(unary, np.float64)
    out: list[Fragment] = []
    start = 0
    for j in range(1, len(tokens) + 1):
        if j == len(tokens) or assignment[j] != assignment[start]:
            i = int(assignment[start])
            out.append(Fragment(" ".join(tokens[start:j]), i, tuple(int(x) for x in boxes[i]),  # type: ignore[arg-type]
                                float(u[start:j, i].mean()), start, j))
            start = j
    return out
