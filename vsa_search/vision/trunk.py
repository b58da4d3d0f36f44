"""The CNN cut in two for fine-tuning: the frozen lower stages run once per photo and their output
map is stored (MapStore); the top (the last stages, the conv head and its BatchNorm) is trained on
the stored maps, and RoIAlign turns its output into region features exactly as RegionEncoder does,
so a top that has not moved gives the feature store's features (up to the float16 of the map)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.config import MapConfig, RegionConfig
from ..core.device import pick_device
from ..core.errors import ImageError, StoreError
from .features import ExtractReport, FeatureStore, extract_to_store, same_extractor
from .images import DEFAULT_MAX_MEGAPIXELS, decode
from .photostore import SKIP, PhotoStore
from .regions import EXTRACT_BATCH, RegionFeatures, cnn_input, load_backbone, pool_boxes
from .tops import lower_stages, top_cut, with_top

FORMAT_VERSION = 1
_MAP = "m/"


class CNNTop(nn.Module):
    """Blocks cfg.cut.. of the backbone plus its conv head: (B, C, H, W) stored maps -> region
    features (sum R, feature_dim). BatchNorm stays in eval mode whatever train() says: batches of
    32 photos would make poor statistics, and the frozen features were made with the running ones."""

    def __init__(self, cfg: MapConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        m = backbone if backbone is not None else load_backbone(cfg.backbone)
        self.blocks = nn.Sequential(*list(m.blocks)[cfg.cut:])
        self.conv_head = m.conv_head
        self.bn2 = m.bn2

    def train(self, mode: bool = True) -> CNNTop:
        super().train(mode)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
        return self

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(maps.float())))

    def regions(self, maps: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Region features of each photo's boxes (float xyxy in the photo's own coordinates, row 0
        the full image, which gives the photo's size): (sum R, feature_dim), photo by photo."""
        sizes = [(float(b[0, 2]), float(b[0, 3])) for b in boxes]
        return pool_boxes(self(maps), boxes, sizes, self.cfg.input_size, RegionConfig().roi_output)


def top_weights(top: CNNTop) -> dict[str, np.ndarray]:
    """The top's weights under the backbone's own (timm) names, float16: what a model file and a feature
    store keep of it (RegionConfig.top names them; tops.with_top puts them back into a backbone)."""
    out = {}
    for k, v in top.state_dict().items():
        if not v.is_floating_point():  # BatchNorm's step counter: not a weight
            continue
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k = f"blocks.{int(i) + top.cfg.cut}.{rest}"
        out[k] = v.detach().cpu().half().numpy()
    return out


class MapLower:
    """The frozen lower stages: a photo warped to cfg.input_size -> its (C, H, W) map at the cut."""

    def __init__(self, cfg: MapConfig, backbone: nn.Module | None = None):
        self.cfg = cfg
        self.model = (backbone if backbone is not None else load_backbone(cfg.backbone)).eval()

    def tensor(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(cnn_input(image.convert("RGB"), self.cfg.input_size)).permute(2, 0, 1)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch if len(batch) > 1 else batch.expand(2, -1, -1, -1)  # see RegionEncoder._cnn
        return lower_stages(self.model, x.contiguous(), self.cfg.cut)[: len(batch)]


class MapStore(PhotoStore):
    """LMDB store of the lower stages' maps, float16, one per photo id. `MapStore(path, cfg)` creates
    one (or checks that an existing one has the same cut); `MapStore(path)` opens one."""

    KIND, MAKE, PREFIX = "map store", "vsa features maps", _MAP
    FORMAT_VERSION, CONFIG_KEY, CONFIG_CLASS = FORMAT_VERSION, "map_config", MapConfig
    config: MapConfig

    def made_by(self, cfg: MapConfig) -> dict[str, str]:
        return {"map_id": cfg.map_id()}

    def mismatch(self, cfg: MapConfig) -> str:
        return f"holds maps of {self.meta['map_id']}, not {cfg.map_id()}"

    def get(self, image_id: str) -> np.ndarray:
        a = self.kv.get_arrays(_MAP + image_id)
        if a is None:
            raise StoreError(f"{self.path}: no map for {image_id}")
        return a["map"]

    def put(self, items: list[tuple[str, np.ndarray | str]]) -> None:
        with self.kv.batch() as b:
            for image_id, value in items:
                if isinstance(value, str):
                    b.put_json(SKIP + image_id, value)
                else:
                    b.delete(SKIP + image_id)
                    b.put_arrays(_MAP + image_id, map=value.astype(np.float16))


def extract_maps(photos: dict[str, Path], out: str | Path, cfg: MapConfig, batch_size: int = 16,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, int | dict[str, str]]:
    """Store the lower stages' map of every photo (id -> path) not yet in the store at `out`;
    resumable (one transaction per batch). Unreadable photos are recorded as skipped."""
    with MapStore(out, cfg) as store:
        todo = [(i, p) for i, p in photos.items() if i not in store]
        already = len(photos) - len(todo)
        if on_progress and already:
            on_progress(already)
        lower = MapLower(cfg) if todo else None
        extracted = 0
        for a in range(0, len(todo), batch_size):
            chunk = todo[a : a + batch_size]
            done: list[tuple[str, np.ndarray | str]] = []
            ok, tensors = [], []
            for image_id, p in chunk:
                try:
                    tensors.append(lower.tensor(  # type: ignore[union-attr]
                        decode(p, max_megapixels, min_side=cfg.input_size).image))
                    ok.append(image_id)
                except ImageError as e:
                    done.append((image_id, str(e)))
            if tensors:
                maps = lower(torch.stack(tensors)).numpy()
                done += list(zip(ok, maps))
                extracted += len(ok)
            store.put(done)
            if on_progress:
                on_progress(len(chunk))
        return {"extracted": extracted, "already": already, "skipped": store.skipped()}


# --------------------------------------------------------------------------- a fine-tuned top's feature store

FROM_MAPS_BATCH = 64  # photos per top forward on stored maps (7x7 maps: cheap, so large batches)


def tuned_top(cfg: RegionConfig, top: dict[str, np.ndarray], map_cfg: MapConfig) -> CNNTop:
    """The fine-tuned top cfg.top names (weights `top`, timm names) on maps of `map_cfg`, which must
    be cut where the top starts, from the same backbone at the same input size."""
    if (map_cfg.backbone, map_cfg.input_size, map_cfg.cut) != (cfg.backbone, cfg.input_size, top_cut(cfg)):
        raise StoreError(f"maps of {map_cfg.map_id()} are not the input of CNN top {cfg.top} "
                         f"({cfg.backbone} at {cfg.input_size} px, cut {top_cut(cfg)})")
    return CNNTop(map_cfg, with_top(load_backbone(cfg.backbone), cfg, top)).eval()


def extract_from_maps(image_ids: list[str], out: str | Path, cfg: RegionConfig, top: dict[str, np.ndarray],
                      maps: str | Path, frozen: str | Path, device: str | None = None,
                      batch_size: int = FROM_MAPS_BATCH,
                      on_progress: Callable[[int], None] | None = None) -> tuple[ExtractReport, list[str]]:
    """A fine-tuned top's features without decoding a photo: the top (cfg.top, weights `top`) on the
    lower-stage maps stored in `maps`, RoIAlign of the boxes stored in `frozen` (a store of ImageNet's
    features by the same extractor, cfg.imagenet()), whose concepts are copied (they are ImageNet's).
    Photos already in `out` are counted, not redone; one transaction per batch, so resumable. Returns
    (the report, the ids neither done nor stored because a store lacks them)."""
    if cfg.test_time_views():  # the maps are of the photos at input_size, not mirrored nor at other sizes
        raise StoreError(f"{out}: features with test-time flips or sizes need the photos themselves: extract them "
                         "from the photos (without stored maps)")
    report = ExtractReport()
    dev = pick_device(device)
    with FeatureStore(out, cfg) as store, MapStore(maps, readonly=True) as ms, \
            FeatureStore(frozen, readonly=True) as fs:
        if not cfg.top or cfg.pooling != "roi":
            raise StoreError(f"{out}: features from maps need a fine-tuned top and RoI pooling")
        if not same_extractor(fs.config, cfg.imagenet()):
            raise StoreError(f"{frozen}: features by extractor {fs.extractor_id}, not {cfg.imagenet().extractor_id()} "
                             "(the ImageNet features of the model's extractor)")
        net = tuned_top(cfg, top, ms.config).to(dev)
        store.put_top(top)
        report.already = sum(i in store for i in image_ids)
        if on_progress and report.already:
            on_progress(report.already)
        todo = [i for i in image_ids if i not in store and i in ms and i in fs]
        left = [i for i in image_ids if i not in store and (i not in ms or i not in fs)]
        for a in range(0, len(todo), batch_size):
            chunk = todo[a : a + batch_size]
            ref = [fs.get(i) for i in chunk]
            x = torch.from_numpy(np.stack([ms.get(i) for i in chunk])).to(dev)
            with torch.inference_mode():
                flat = pool_boxes(net(x), [r.boxes for r in ref], [(int(r.boxes[0, 2]), int(r.boxes[0, 3]))
                                  for r in ref], cfg.input_size, cfg.roi_output).cpu().numpy()
            feats = np.split(flat, np.cumsum([len(r.boxes) for r in ref])[:-1])
            store.put([(i, RegionFeatures(r.boxes, f, imagenet=r.features)) for i, r, f in zip(chunk, ref, feats)],
                      concepts={i: fs.concepts_bytes(i) for i in chunk})
            report.extracted += len(chunk)
            report.from_maps += len(chunk)
            if on_progress:
                on_progress(len(chunk))
    return report, left


def extract_with_top(photos: dict[str, Path], out: str | Path, cfg: RegionConfig, top: dict[str, np.ndarray] | None,
                     maps: str | Path | None = None, frozen: str | Path | None = None, device: str | None = None,
                     batch_size: int = EXTRACT_BATCH, on_progress: Callable[[int], None] | None = None
                     ) -> ExtractReport:
    """The feature store of an alignment model's extractor (cfg, with its fine-tuned top's weights
    `top`): photos (id -> path) whose maps and ImageNet features are stored (`maps`, `frozen`) through
    extract_from_maps, every other photo from its file (extract_to_store)."""
    report = ExtractReport()
    rest = photos
    if maps is not None or frozen is not None:
        if maps is None or frozen is None or not cfg.top:
            raise StoreError("features from stored maps need both the map store and the store of ImageNet's "
                             "features of the same photos, and a model with a fine-tuned top")
        report, left = extract_from_maps(list(photos), out, cfg, top or {}, maps, frozen, device,
                                         on_progress=on_progress)
        rest = {i: photos[i] for i in left}
    slow = extract_to_store(rest, out, cfg, device=device, batch_size=batch_size, on_progress=on_progress, top=top)
    report.extracted += slow.extracted
    report.already += slow.already
    report.skipped.update(slow.skipped)
    return report
