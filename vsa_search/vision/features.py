"""The feature store: boxes and region features per photo in one LMDB environment, so that
training and evaluation never run the CNN twice. Resumable: a killed extraction continues
where it stopped, because each batch is one transaction and finished photos are skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import paths
from ..core.config import RegionConfig, top_id
from ..core.errors import StoreError
from .concepts import Concepts
from .concepts import from_features as concepts_from_features
from .photostore import SKIP, PhotoStore
from .regions import EXTRACT_BATCH, RegionEncoder, RegionFeatures, extract

FORMAT_VERSION = 1
_FEAT = "f/"
_CON = "c/"  # c/<id> -> region concepts (concepts.Concepts bytes); stores written before them derive them
_TOP = "top"  # the fine-tuned CNN top's weights, in a store of its features (RegionConfig.top)


class FeatureStore(PhotoStore):
    """`FeatureStore(path)` opens an existing store; pass `cfg` to create one (or to check
    that an existing store was made by the same extractor)."""

    KIND, MAKE, PREFIX = "feature store", "vsa features extract", _FEAT
    FORMAT_VERSION, CONFIG_KEY, CONFIG_CLASS = FORMAT_VERSION, "region_config", RegionConfig
    config: RegionConfig

    def __init__(self, path: str | Path, cfg: RegionConfig | None = None, readonly: bool = False):
        super().__init__(path, cfg, readonly)
        self.extractor_id: str = self.meta["extractor_id"]

    def made_by(self, cfg: RegionConfig) -> dict[str, str]:
        return {"extractor_id": cfg.extractor_id()}

    def mismatch(self, cfg: RegionConfig) -> str:
        return f"made by extractor {self.meta['extractor_id']}, not {cfg.extractor_id()}"

    def get(self, image_id: str) -> RegionFeatures:
        a = self.kv.get_arrays(_FEAT + image_id)
        if a is None:
            raise StoreError(f"{self.path}: no features for {image_id}")
        return RegionFeatures(a["boxes"].astype(np.int32), a["features"].astype(np.float32))

    def concepts(self, image_id: str) -> Concepts:
        """The photo's region concepts: stored ones, or derived from its features (older stores)."""
        return Concepts.from_bytes(self.concepts_bytes(image_id))

    def concepts_bytes(self, image_id: str) -> bytes:
        """concepts() as stored (Concepts bytes): what a store of a fine-tuned top's features copies."""
        b = self.kv.get_bytes(_CON + image_id)
        if b is not None:
            return b
        if self.config.top:
            raise StoreError(f"{self.path}: no concepts stored for {image_id}")
        return concepts_from_features(self.get(image_id).features, backbone=self.config.backbone).to_bytes()

    def top(self) -> dict[str, np.ndarray] | None:
        """The fine-tuned CNN top (timm names, float16) the features come from (config.top), if any."""
        return self.kv.get_arrays(_TOP) if self.config.top else None

    def put_top(self, weights: dict[str, np.ndarray]) -> None:
        if top_id(weights) != self.config.top:
            raise StoreError(f"{self.path}: holds features of CNN top {self.config.top or 'of ImageNet'}, "
                             f"not {top_id(weights) or 'none'}")
        with self.kv.batch() as b:
            b.put_arrays(_TOP, **{k: np.asarray(v, np.float16) for k, v in weights.items()})

    def get_many(self, image_ids: Iterable[str]) -> list[RegionFeatures]:
        return [self.get(i) for i in image_ids]

    def put(self, items: Iterable[tuple[str, RegionFeatures | str]],
            concepts: Mapping[str, bytes] | None = None) -> None:
        """Write one batch atomically; a string value records a skipped photo and its reason.
        `concepts`: photos' concepts already known (Concepts bytes, e.g. copied from the store of
        ImageNet's features of the same boxes); the others are computed from ImageNet's features."""
        with self.kv.batch() as b:
            for image_id, value in items:
                if isinstance(value, str):
                    b.put_json(SKIP + image_id, value)
                else:
                    b.delete(SKIP + image_id)  # a photo fixed since an earlier skip
                    # float16 halves the store; the ranking model is insensitive to it.
                    b.put_arrays(_FEAT + image_id, boxes=value.boxes.astype(np.int32),
                                 features=value.features.astype(np.float16))
                    known = concepts.get(image_id) if concepts else None
                    b.put_bytes(_CON + image_id, known if known is not None else concepts_from_features(
                        imagenet_features(value, self.config), backbone=self.config.backbone).to_bytes())


def imagenet_features(value: RegionFeatures, cfg: RegionConfig) -> np.ndarray:
    """The ImageNet-top features of a photo's regions, whose classes are its concepts."""
    if cfg.top and value.imagenet is None:
        raise StoreError(f"features of CNN top {cfg.top} came without ImageNet's features for the concepts")
    return value.imagenet_or_own


@dataclass
class ExtractReport:
    extracted: int = 0
    already: int = 0
    from_maps: int = 0  # of `extracted`: through a fine-tuned top on stored maps (trunk.extract_from_maps)
    skipped: dict[str, str] = field(default_factory=dict)


def same_extractor(a: RegionConfig, b: RegionConfig) -> bool:
    """The one rule for "are these features comparable": the whole region configs agree (compared
    through extractor_id, which fingerprints every field, defaults of newer fields included)."""
    return a.extractor_id() == b.extractor_id()


def require_extractor(store_config: RegionConfig, model_config: RegionConfig, store: str | Path,
                      model: str | Path) -> None:
    """A model only understands features of the extractor it was trained on."""
    if not same_extractor(store_config, model_config):
        how = f"`vsa features extract --model {model}`" if model_config.top else "the model's region preset"
        raise StoreError(f"{store}: features by extractor {store_config.extractor_id()}, but {model} was trained "
                         f"on {model_config.extractor_id()}; extract with {how}")


def extract_to_store(photos: dict[str, Path], out: str | Path, cfg: RegionConfig,
                     device: str | None = None, batch_size: int = EXTRACT_BATCH,
                     on_progress: Callable[[int], None] | None = None,
                     encoder: RegionEncoder | None = None,
                     top: dict[str, np.ndarray] | None = None) -> ExtractReport:
    """Extract every photo (id -> path) not yet in the store at `out`. Photos already stored
    are counted, not redone; unreadable ones are recorded as skipped and reported. `top`: the
    fine-tuned CNN top cfg.top names (LoadedAlign.top; or the `encoder`'s), kept in the store."""
    report = ExtractReport()
    if encoder is not None:
        if encoder.cfg.extractor_id() != cfg.extractor_id():
            raise StoreError(f"{out}: the encoder extracts {encoder.cfg.extractor_id()}, not {cfg.extractor_id()}")
        top = top or getattr(encoder, "top", None)
    with FeatureStore(out, cfg) as store:
        if cfg.top:
            store.put_top(top or {})  # refuses weights that are not cfg.top's
        todo = []
        for image_id, p in photos.items():
            if image_id in store:
                report.already += 1
            else:
                todo.append((image_id, p))
        if on_progress and report.already:
            on_progress(report.already)
        if todo:
            encoder = encoder or RegionEncoder(cfg, device, top=top)
            ids = {p: i for i, p in todo}
            pending: list[tuple[str, RegionFeatures | str]] = []
            for path, result in extract([p for _, p in todo], encoder, batch_size=batch_size):
                pending.append((ids[path], result))
                if len(pending) == batch_size:
                    store.put(pending)
                    _tally(report, pending, on_progress)
                    pending = []
            if pending:
                store.put(pending)
                _tally(report, pending, on_progress)
        report.skipped.update(store.skipped())
    return report


def extract_to_cache(photos: dict[str, Path], cfg: RegionConfig, device: str | None = None,
                     on_progress: Callable[[int], None] | None = None,
                     top: dict[str, np.ndarray] | None = None) -> Path:
    """Extract photos (id -> path) into the one evaluation cache per extractor,
    $VSA_HOME/cache/features/<extractor id> (the id names a fine-tuned top, whose weights `top` are);
    photos already there are not extracted again, so `eval recall` and `eval caption` share what
    either has extracted. Returns the store's path."""
    store = paths.cache_dir() / "features" / cfg.extractor_id()
    extract_to_store(photos, store, cfg, device=device, on_progress=on_progress, top=top)
    return store


def _tally(report: ExtractReport, batch: list[tuple[str, RegionFeatures | str]],
           on_progress: Callable[[int], None] | None) -> None:
    for image_id, v in batch:
        if isinstance(v, str):
            report.skipped[image_id] = v
        else:
            report.extracted += 1
    if on_progress:
        on_progress(len(batch))
