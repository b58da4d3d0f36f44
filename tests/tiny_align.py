"""A tiny alignment model over a fixed word list: untrained, fast to build, different per seed.
The index, fault and search tests share it."""

from __future__ import annotations

from pathlib import Path

import torch

from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models.alignment import AlignModel, save_align

TINY = REGION_PRESETS["tiny"]
WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "girl", "water", "two", "is", "running"]


def tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny alignment model (random weights from `seed`) to `path` and return the path."""
    torch.manual_seed(seed)
    vocab = Vocab(list(SPECIALS) + WORDS)
    return save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, TINY, path)
