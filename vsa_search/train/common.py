"""What both trainers share: seeding, element-wise gradient clipping, weight snapshots, mixed
precision and optimizers."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def clip_elementwise(params, clip: float) -> None:
    """The paper clips gradients element-wise (not by norm)."""
    if clip > 0:
        torch.nn.utils.clip_grad_value_(params, clip)


def cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot of the weights that later optimizer steps cannot change."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class MixedPrecision:
    """Autocast for training steps: bf16 on GPUs that have it, else fp16 with a GradScaler. CUDA
    only: amp=None means on for CUDA and off for CPU (CPU always trains in float32). Losses are
    computed from float32 scores/logits; the optimizer keeps float32 weights."""

    def __init__(self, device: torch.device, amp: bool | None = None):
        if amp and device.type != "cuda":
            raise UsageError(f"--amp needs a CUDA device (training on {device})")
        self.enabled = device.type == "cuda" and amp is not False
        self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if self.enabled else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params, clip: float) -> None:
        """backward, element-wise clip (of unscaled gradients) and optimizer step."""
        params = list(params)
        if self.scaler is None:
            loss.backward()
            clip_elementwise(params, clip)
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        clip_elementwise(params, clip)
        self.scaler.step(opt)  # skipped when fp16 overflowed; the scale then shrinks
        self.scaler.update()

    def describe(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.enabled else "float32"



def make_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")
