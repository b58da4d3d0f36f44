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

from ..core.config import MapConfig, RegionConfig, from_dict, to_dict
from ..core.errors import ImageError, StoreError
from ..core.kv import KV
from .images import DEFAULT_MAX_MEGAPIXELS, decode
from .regions import cnn_input, load_backbone, pool_boxes

FORMAT_VERSION = 1
_META = "meta"
_MAP = "m/"
_SKIP = "skip/"


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
    store keep of it (RegionConfig.top names them; regions.with_top puts them back into a backbone)."""
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
        m = self.model
        x = batch if len(batch) > 1 else batch.expand(2, -1, -1, -1)  # see RegionEncoder._cnn
        x = m.bn1(m.conv_stem(x.contiguous()))
        for block in list(m.blocks)[: self.cfg.cut]:
            x = block(x)
        return x[: len(batch)]


class MapStore:
    """LMDB store of the lower stages' maps, float16, one per photo id. `MapStore(path, cfg)` creates
    one (or checks that an existing one has the same cut); `MapStore(path)` opens one."""

    def __init__(self, path: str | Path, cfg: MapConfig | None = None, readonly: bool = False):
        self.path = Path(path)
        if (readonly or cfg is None) and not (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: no map store here (run `vsa features maps`)")
        self.kv = KV(self.path, readonly=readonly)
        meta = self.kv.get_json(_META)
        if meta is None:
            if cfg is None:
                raise StoreError(f"{self.path}: not a map store (no metadata)")
            meta = {"format_version": FORMAT_VERSION, "map_id": cfg.map_id(), "map_config": to_dict(cfg)}
            self.kv.put_json(_META, meta)
        if meta.get("format_version") != FORMAT_VERSION or "map_config" not in meta:
            raise StoreError(f"{self.path}: not a map store of format {FORMAT_VERSION}; extract again")
        self.config: MapConfig = from_dict(MapConfig, meta["map_config"])
        if cfg is not None and cfg.map_id() != self.config.map_id():
            raise StoreError(f"{self.path}: holds maps of {self.config.map_id()}, not {cfg.map_id()}; "
                             "use another --out")

    def close(self) -> None:
        self.kv.close()

    def __enter__(self) -> MapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, image_id: str) -> bool:
        return (_MAP + image_id) in self.kv

    def __len__(self) -> int:
        return self.kv.count(_MAP)

    def get(self, image_id: str) -> np.ndarray:
        a = self.kv.get_arrays(_MAP + image_id)
        if a is None:
            raise StoreError(f"{self.path}: no map for {image_id}")
        return a["map"]

    def put(self, items: list[tuple[str, np.ndarray | str]]) -> None:
        with self.kv.batch() as b:
            for image_id, value in items:
                if isinstance(value, str):
                    b.put_json(_SKIP + image_id, value)
                else:
                    b.delete(_SKIP + image_id)
                    b.put_arrays(_MAP + image_id, map=value.astype(np.float16))

    def skipped(self) -> dict[str, str]:
        return {k[len(_SKIP):]: v for k, v in self.kv.items_json(_SKIP)}


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
