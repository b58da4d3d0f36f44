"""What the two per-photo LMDB stores share (features.FeatureStore: boxes and region features;
trunk.MapStore: the lower CNN stages' maps): a metadata record naming the config that made every
entry, one entry per photo id under a prefix, skipped photos with their reason, and one clear line
for a path that holds no such store, another format or another config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from ..core.config import from_dict, to_dict
from ..core.errors import StoreError
from ..core.kv import KV

META = "meta"
SKIP = "skip/"


class PhotoStore:
    """`Store(path)` opens an existing store; `Store(path, cfg)` creates one, or checks that an existing
    one was made by the same config. Subclasses name what they hold (the class attributes)."""

    KIND = "store"  # "feature store", "map store": how messages name it
    MAKE = ""  # the command that fills one
    PREFIX = ""  # key prefix of the per-photo entries
    FORMAT_VERSION = 1
    CONFIG_KEY = ""  # where the metadata keeps the config (a frozen dataclass of CONFIG_CLASS)
    CONFIG_CLASS: Any = None

    def __init__(self, path: str | Path, cfg: Any = None, readonly: bool = False):
        self.path = Path(path)
        if (readonly or cfg is None) and not (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: no {self.KIND} here (run `{self.MAKE}`)")
        self.kv = KV(self.path, readonly=readonly)
        meta = self.kv.get_json(META)
        if meta is None:
            if cfg is None:
                raise StoreError(f"{self.path}: not a {self.KIND} (no metadata)")
            meta = {"format_version": self.FORMAT_VERSION, self.CONFIG_KEY: to_dict(cfg), **self.made_by(cfg)}
            self.kv.put_json(META, meta)
        if meta.get("format_version") != self.FORMAT_VERSION or self.CONFIG_KEY not in meta:
            raise StoreError(f"{self.path}: {self.KIND} format {meta.get('format_version')}, "
                             f"this version reads {self.FORMAT_VERSION}; extract again")
        self.meta = meta
        self.config = from_dict(self.CONFIG_CLASS, meta[self.CONFIG_KEY])
        if cfg is not None and (want := self.made_by(cfg)) != {k: meta.get(k) for k in want}:
            raise StoreError(f"{self.path}: {self.mismatch(cfg)}; use another --out")

    def made_by(self, cfg: Any) -> dict[str, str]:
        """What identifies a config in the metadata (e.g. {"extractor_id": ...})."""
        raise NotImplementedError

    def mismatch(self, cfg: Any) -> str:
        """Why this store is not one of `cfg`, in words."""
        raise NotImplementedError

    def close(self) -> None:
        self.kv.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, image_id: str) -> bool:
        return (self.PREFIX + image_id) in self.kv

    def __len__(self) -> int:
        return self.kv.count(self.PREFIX)

    def ids(self) -> list[str]:
        return [k[len(self.PREFIX):] for k in self.kv.keys(self.PREFIX)]

    def skipped(self) -> dict[str, str]:
        return {k[len(SKIP):]: v for k, v in self.kv.items_json(SKIP)}
