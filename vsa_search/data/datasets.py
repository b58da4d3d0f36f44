"""Caption data set readers. Flickr8k (official token file + split lists), COCO captions JSON and
Karpathy's `dataset_*.json` all come back as the same `Dataset` of `Record`s."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import DatasetError, UsageError

SPLITS: tuple[str, ...] = ("train", "dev", "test", "none")
# Karpathy's JSON says "val" for dev and keeps COCO's extra "restval" images for training.
_SPLIT_ALIASES = {"val": "dev", "restval": "train"}

FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {
    "train": "splits/Flickr_8k.trainImages.txt",
    "dev": "splits/Flickr_8k.devImages.txt",
    "test": "splits/Flickr_8k.testImages.txt",
}


@dataclass(frozen=True)
class Record:
    """One photo and its reference sentences. `image_id` is the photo's file name."""

    image_id: str
    path: Path
    split: str
    sentences: tuple[str, ...]


@dataclass
class Dataset:
    name: str
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    def split(self, name: str) -> list[Record]:
        """All records of one split, whether or not the photo is on disk."""
        _check_split(name)
        return [r for r in self.records if r.split == name]

    def present(self, split: str | None = None) -> list[Record]:
        """Records whose photo file exists, optionally of one split ("all" or None: every split)."""
        recs = self.records if split in (None, "all") else self.split(split)
        return [r for r in recs if r.path.is_file()]

    def missing(self, split: str | None = None) -> list[Record]:
        recs = self.records if split is None else self.split(split)
        return [r for r in recs if not r.path.is_file()]

    def summary(self) -> dict[str, Any]:
        """{"name", "total", "present", "missing", "splits": {split: {"total", "present", "missing"}}}."""
        splits: dict[str, dict[str, int]] = {s: {"total": 0, "present": 0, "missing": 0} for s in SPLITS}
        for r in self.records:
            row = splits[r.split]
            row["total"] += 1
            row["present" if r.path.is_file() else "missing"] += 1
        return {
            "name": self.name,
            "total": len(self.records),
            "present": sum(row["present"] for row in splits.values()),
            "missing": sum(row["missing"] for row in splits.values()),
            "splits": splits,
        }


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise UsageError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")


def _norm_split(name: Any, where: Path) -> str:
    split = _SPLIT_ALIASES.get(name, name)
    if split not in SPLITS:
        raise DatasetError(f"{where}: unknown split {name!r}")
    return split


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from None


def _read_json(path: Path, what: str) -> Any:
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"malformed JSON in {path}: {e}") from None


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path.resolve()


def load_flickr8k(root: Path | None = None) -> Dataset:
    """Every photo named in `Flickr8k.token.txt`, sorted by file name, with its official split
    ("none" for the photos in no split list). Photos need not be on disk."""
    root = _require_dir(Path(root) if root is not None else paths.flickr8k_root(), "Flickr8k root")
    tokens_path = root / FLICKR8K_TOKENS
    captions: dict[str, list[str]] = defaultdict(list)
    for n, line in enumerate(_read_text(tokens_path, "Flickr8k token file").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name, hash_, _ = key.rpartition("#")
        if not sep or not hash_:
            raise DatasetError(f"{tokens_path}:{n}: expected '<file>#<n>\\t<caption>'")
        # The official token file also holds "2258277193_586949ec62.jpg.1": a stray duplicate
        # key for a photo that is in no split and not among the 8,091 released images.
        if not name.lower().endswith(".jpg"):
            continue
        captions[name].append(caption.strip())

    split_of: dict[str, str] = {}
    for split, rel in FLICKR8K_SPLIT_FILES.items():
        path = root / rel
        for name in _read_text(path, f"Flickr8k {split} split list").split():
            if name not in captions:
                raise DatasetError(f"{path}: {name} has no captions in {tokens_path}")
            if split_of.setdefault(name, split) != split:
                raise DatasetError(f"{path}: {name} is also in the {split_of[name]} split")

    images = root / "images"
    records = [
        Record(image_id=name, path=images / name, split=split_of.get(name, "none"), sentences=tuple(caps))
        for name, caps in sorted(captions.items())
    ]
    return Dataset(name="flickr8k", records=records)


def load_coco(captions_json: Path, images_dir: Path, split: str = "train") -> Dataset:
    """COCO captions format: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
    Every image gets `split`; images without captions are kept with no sentences."""
    captions_json = Path(captions_json)
    split = _norm_split(split, captions_json)
    images_dir = _require_dir(Path(images_dir), "COCO images directory")
    data = _read_json(captions_json, "COCO captions file")
    if not isinstance(data, dict):
        raise DatasetError(f"{captions_json}: not COCO captions format (top level is not an object)")
    try:
        files = {img["id"]: str(img["file_name"]) for img in data["images"]}
        caps: dict[Any, list[str]] = defaultdict(list)
        for ann in data["annotations"]:
            if ann["image_id"] not in files:
                raise DatasetError(f"{captions_json}: caption for unknown image id {ann['image_id']}")
            caps[ann["image_id"]].append(str(ann["caption"]).strip())
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{captions_json}: not COCO captions format (missing {e})") from None
    records = [
        Record(image_id=name, path=images_dir / name, split=split, sentences=tuple(caps[img_id]))
        for img_id, name in files.items()
    ]
    records.sort(key=lambda r: r.image_id)
    return Dataset(name=captions_json.stem, records=records)


def load_karpathy(dataset_json: Path, images_dir: Path) -> Dataset:
    """Karpathy's `dataset_flickr8k.json` / `dataset_coco.json`: {"images": [{"filename", "filepath"?,
    "split", "sentences": [{"raw", "tokens"}]}]}. "val" becomes "dev", "restval" becomes "train"."""
    dataset_json = Path(dataset_json)
    images_dir = _require_dir(Path(images_dir), "images directory")
    data = _read_json(dataset_json, "Karpathy dataset file")
    if not isinstance(data, dict):
        raise DatasetError(f"{dataset_json}: not Karpathy dataset format (top level is not an object)")
    records = []
    try:
        for img in data["images"]:
            name = str(img["filename"])
            # COCO entries keep their photos in per-split folders ("train2014", "val2014").
            path = images_dir / img["filepath"] / name if img.get("filepath") else images_dir / name
            sents = tuple(
                str(s["raw"]).strip() if "raw" in s else " ".join(s["tokens"]) for s in img["sentences"]
            )
            records.append(Record(name, path, _norm_split(img["split"], dataset_json), sents))
    except (KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f"{dataset_json}: not Karpathy dataset format (missing {e})") from None
    records.sort(key=lambda r: r.image_id)
    name = data.get("dataset") if isinstance(data.get("dataset"), str) else dataset_json.stem
    return Dataset(name=name, records=records)


_LOADER_ARGS = {
    "flickr8k": (set(), set()),
    "coco": ({"captions_json"}, {"split", "images_dir"}),
    "karpathy": ({"dataset_json"}, {"images_dir"}),
}


def load_dataset(kind: str, root: Path | None = None, **kw: Any) -> Dataset:
    """Dispatch on `kind`:
    - "flickr8k": `root` is the data folder (default: the shared copy);
    - "coco": `root` (or `images_dir=`) is the images folder, `captions_json=` the captions file,
      optional `split=`;
    - "karpathy": `root` (or `images_dir=`) is the images folder, `dataset_json=` the dataset file."""
    if kind not in _LOADER_ARGS:
        raise UsageError(f"unknown data set kind {kind!r}; expected {', '.join(_LOADER_ARGS)}")
    required, optional = _LOADER_ARGS[kind]
    # Checked here rather than by catching TypeError, which would also swallow real bugs.
    if extra := sorted(set(kw) - required - optional):
        raise UsageError(f"{kind} data set does not take {', '.join(extra)}")
    if lacking := sorted(required - set(kw)):
        raise UsageError(f"{kind} data set needs {', '.join(lacking)}")
    if kind == "flickr8k":
        return load_flickr8k(root)
    images_dir = kw.pop("images_dir", root)
    if images_dir is None:
        raise UsageError(f"{kind} data set needs an images folder (root)")
    if kind == "coco":
        return load_coco(kw["captions_json"], images_dir, split=kw.get("split", "train"))
    return load_karpathy(kw["dataset_json"], images_dir)
