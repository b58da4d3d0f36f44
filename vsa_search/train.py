"""Training: the alignment model (`train_embed`) and the caption generator (`train_caption`).
Shared pieces first; each trainer below owns its own section."""

from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(device: str | None = None) -> torch.device:
    """The one place that chooses CPU or CUDA; everything else receives the result."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def clip_elementwise(params, clip: float) -> None:
    """The paper clips gradients element-wise (not by norm)."""
    if clip > 0:
        torch.nn.utils.clip_grad_value_(params, clip)


# --------------------------------------------------------------------------- embed (alignment model)


# --------------------------------------------------------------------------- caption (generator)
