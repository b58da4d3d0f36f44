"""A CNN top fine-tuned with the ranking loss (RegionConfig.top, "cut<stage>-<hash>"), as the encoders run it:
its name, its fit to the backbone, the backbone with its weights, and the backbone cut where it starts. The
torch encoder (regions.py), the numpy CNN (cnn.py) and the fine-tuning (trunk.py) share these; torch is
imported only inside the functions that run it, so the numpy CNN stays torch-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.config import RegionConfig, top_id
from ..core.errors import ModelError

if TYPE_CHECKING:
    import torch


def top_cut(cfg: RegionConfig) -> int:
    """The first backbone stage a fine-tuned top (cfg.top, "cut<stage>-<hash>") replaces."""
    return int(cfg.top.split("-")[0].removeprefix("cut"))


def check_top(cfg: RegionConfig, top: dict[str, np.ndarray] | None, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether cfg asks for a fine-tuned top, after checking that `top` is the one it names and fits the
    backbone whose weights have `shapes` (timm names). Both CNNs (torch and numpy) ask it."""
    if top_id(top or {}) != cfg.top:
        raise ModelError(f"features of CNN top {cfg.top or 'of ImageNet'} need that top's weights "
                         f"(given: {top_id(top or {}) or 'none'})")
    if not top:
        return False
    if not cfg.top.startswith("cut") or any(shapes.get(k) != tuple(v.shape) for k, v in top.items()):
        raise ModelError(f"CNN top {cfg.top}: its weights do not fit {cfg.backbone}")
    return True


def with_top(backbone: torch.nn.Module, cfg: RegionConfig, top: dict[str, np.ndarray] | None) -> torch.nn.Module | None:
    """A copy of `backbone` with the fine-tuned top's weights (timm names), or None for cfg.top == ""."""
    import copy

    import torch

    if not check_top(cfg, top, {k: tuple(v.shape) for k, v in backbone.state_dict().items()}):
        return None
    tuned = copy.deepcopy(backbone)
    tuned.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))  # type: ignore[union-attr]
                           for k, v in top.items()}, strict=False)
    return tuned.eval()


def lower_stages(m: torch.nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    """The stem and stages ..cut-1 of a timm EfficientNet: the map a top from stage `cut` takes (what
    `vsa features maps` stores)."""
    h = m.bn1(m.conv_stem(x))
    for stage in list(m.blocks)[:cut]:
        h = stage(h)
    return h


def upper_stages(m: torch.nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    """Stages cut.. and the conv head of a timm EfficientNet: lower_stages' map -> the feature map."""
    for stage in list(m.blocks)[cut:]:
        h = stage(h)
    return m.bn2(m.conv_head(h))
