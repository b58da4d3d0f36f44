"""What both trainers share: seeding, element-wise gradient clipping, weight snapshots, mixed
precision, optimizers, and the epoch loop with its bookkeeping (best epoch, patience, resume)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
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


# --------------------------------------------------------------------------- the epoch loop


@dataclass
class TrainState:
    """The bookkeeping both trainers share: the last epoch run, the best epoch so far by `score`
    (higher is better), epochs since it (for patience), one history row per epoch, and the best
    epoch's weights and figures (`best_info`). Each trainer keeps its own file keys for these (see
    its save), so runs saved before this class existed resume unchanged."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = float("-inf")
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_info: dict[str, Any] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] | None = None

    def record(self, epoch: int, row: dict[str, Any], score: float, model: torch.nn.Module,
               best_info: dict[str, Any]) -> bool:
        """Note one finished epoch; returns whether it is the new best (its weights are then kept)."""
        self.epoch = epoch
        self.history.append(row)
        if score > self.best_score:
            self.best_epoch, self.best_score, self.bad_epochs, self.best_info = epoch, score, 0, best_info
            self.best_weights = cpu_copy(model)
            return True
        self.bad_epochs += 1
        return False


def run_epochs(state: TrainState, epochs: int, patience: int, model: torch.nn.Module,
               epoch_fn: Callable[[int], tuple[dict[str, Any], float, dict[str, Any]]],
               save: Callable[[bool], None], on_epoch: Callable[[dict[str, Any]], None] | None = None,
               time_up: Callable[[], bool] = lambda: False) -> str:
    """Run epochs state.epoch + 1 .. `epochs`: epoch_fn(epoch) trains one and returns (history row,
    score, best_info); after each the state is updated, save(final) writes the file (final: patience
    spent or the last epoch) and on_epoch(row) reports. Stops early once `patience` epochs in a row
    did not improve, or when time_up() says so. Returns why it stopped: "epochs" | "early" | "time"."""
    start = state.epoch
    for epoch in range(start + 1, epochs + 1):
        if state.bad_epochs >= patience:
            return "early"
        row, score, info = epoch_fn(epoch)
        state.record(epoch, row, score, model, info)
        save(state.bad_epochs >= patience or epoch == epochs)
        if on_epoch:
            on_epoch(row)
        if time_up():
            return "time"
    return "early" if state.bad_epochs >= patience and state.epoch > start else "epochs"
