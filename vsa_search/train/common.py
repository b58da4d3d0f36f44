"""What both trainers share: seeding, element-wise gradient clipping, weight snapshots, mixed
precision, optimizers, and the epoch loop with its bookkeeping (best epoch, patience) and the one
train-state layout that their model files hold for --resume."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import RegionConfig, from_dict
from ..core.errors import ModelError, UsageError
from ..models import checkpoint
from ..models.checkpoint import Checkpoint
from ..vision.features import same_extractor


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

# Keys of the train_state that files written before both trainers shared one layout use instead.
_OLD_KEYS = {"best_metric": "best_score", "best_dev": "best", "last_state_dict": "last_weights",
             "current": "last_weights"}


@dataclass
class TrainState:
    """The bookkeeping both trainers share: the last epoch run, the best epoch so far by `score`
    (higher is better), epochs since it (for patience), one history row per epoch, the best epoch's
    weights and figures (`best_info`), and the training time of earlier runs of the same file."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = float("-inf")
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_info: dict[str, Any] = field(default_factory=dict)
    best_weights: dict[str, torch.Tensor] | None = None
    earlier_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

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

    def seconds(self) -> float:
        """Training time of this file so far, over every run that resumed it."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def to_file(self, model: torch.nn.Module, opt: torch.optim.Optimizer, finished: bool,
                keep: bool = True) -> dict[str, Any]:
        """The train_state a model file holds, alike for both models. keep=False leaves out what only
        --resume needs (optimizer, last weights, RNG state): a smaller file that cannot be resumed."""
        blob: dict[str, Any] = {"epoch": self.epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
                                "bad_epochs": self.bad_epochs, "best": self.best_info, "history": self.history,
                                "seconds": self.seconds(), "finished": finished}
        if keep:  # the file's weights are the best epoch's; the last epoch's are kept when they differ
            blob.update(optimizer=opt.state_dict(), rng=rng_state(),
                        last_weights={} if self.best_epoch == self.epoch else cpu_copy(model))
        return blob


def rng_state() -> dict[str, Any]:
    """torch's generators (the only ones the trainers draw from), as tensors that weights_only loads."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def load_resumable(out: Path, kind: str, init: Any = None) -> Checkpoint:
    """The model file that --resume continues: it must exist and hold the training state."""
    if init is not None:
        raise UsageError("--resume continues the run saved in --out; --init starts a new one")
    if not out.exists():
        raise UsageError(f"--resume: {out} does not exist yet")
    ck = checkpoint.load(out, kind=kind)
    if not ck.train_state.get("optimizer"):
        raise ModelError(f"{out}: holds no training state to resume (saved without it); start a new run "
                         f"from its weights with --init {out}")
    return ck


def resume_state(ck: Checkpoint, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 score: Callable[[dict[str, Any]], float] | None = None) -> TrainState:
    """Put a model file's training state back into `model` and `opt` (the last epoch's weights, the
    optimizer, the RNG) and return its bookkeeping. `score(best)` gives the best score of files that
    predate the shared layout and did not store it."""
    ts = {_OLD_KEYS.get(k, k): v for k, v in ck.train_state.items()}
    model.load_state_dict(ts.get("last_weights") or ck.state_dict)
    opt.load_state_dict(ts["optimizer"])
    if rng := ts.get("rng"):  # each epoch reseeds from (seed, epoch) too: files without it resume alike
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    best = dict(ts.get("best", {}))
    best_score = ts["best_score"] if "best_score" in ts else score(best) if score else float("-inf")
    return TrainState(epoch=int(ts.get("epoch", 0)), best_epoch=int(ts.get("best_epoch", best.get("epoch", 0))),
                      best_score=float(best_score), bad_epochs=int(ts.get("bad_epochs", 0)),
                      history=list(ts.get("history", [])), best_info=best, best_weights=ck.state_dict,
                      earlier_seconds=float(ts.get("seconds", 0.0)))


def require_features(region_cfg: RegionConfig, saved: RegionConfig | dict[str, Any], features: Any,
                     source: str, onto_top: bool = False) -> None:
    """A run that continues a model (`source`: "--resume FILE" or "--init FILE") needs features of
    the extractor that model was trained on. onto_top: a model of ImageNet's features may also go on
    with a fine-tuned top's features of the same extractor (region_cfg.imagenet() is its extractor)."""
    saved = from_dict(RegionConfig, saved) if isinstance(saved, dict) else saved
    if onto_top and not saved.top and same_extractor(region_cfg.imagenet(), saved):
        return
    if not same_extractor(region_cfg, saved):
        # A fine-tuned top's features come from the model itself (its top travels in its file).
        how = f"`vsa features extract --model {source.split(' ', 1)[-1]}`" if saved.top else "its region preset"
        raise UsageError(f"{source}: trained on other features than {features} holds (extract them with {how})")


def run_epochs(state: TrainState, epochs: int, patience: int, model: torch.nn.Module,
               epoch_fn: Callable[[int], tuple[dict[str, Any], float, dict[str, Any]]],
               save: Callable[[], None], on_epoch: Callable[[dict[str, Any]], None] | None = None,
               time_up: Callable[[], bool] = lambda: False) -> str:
    """Run epochs state.epoch + 1 .. `epochs`: epoch_fn(epoch) trains one and returns (history row,
    score, best_info); after each the state is updated, save() writes the file and on_epoch(row)
    reports. Stops early once `patience` epochs in a row did not improve, or when time_up() says so.
    Returns why it stopped: "epochs" | "early" | "time"."""
    start = state.epoch
    for epoch in range(start + 1, epochs + 1):
        if state.bad_epochs >= patience:
            return "early"
        row, score, info = epoch_fn(epoch)
        state.record(epoch, row, score, model, info)
        save()
        if on_epoch:
            on_epoch(row)
        if time_up():
            return "time"
    return "early" if state.bad_epochs >= patience and state.epoch > start else "epochs"
