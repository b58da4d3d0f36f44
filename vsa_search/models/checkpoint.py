"""Self-describing model files. A checkpoint is one `torch.save`d dict of tensors and plain
JSON values, so it loads with `weights_only=True`: kind, format_version, config, vocabulary,
feature-extractor config, metrics, the state dict, and (optionally) training state for --resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import atomic_path
from ..core.config import to_dict
from ..core.errors import ModelError

FORMAT_VERSION = 3  # 2: a querybank's photo features may be in 8 bits; 3: or its photos' region vectors, 8 or 4 bits
READS = (1, 2, 3)  # the formats this version loads


@dataclass
class Checkpoint:
    kind: str  # align | caption
    config: dict[str, Any]  # the model's config dataclass as a dict
    vocab: dict[str, Any]  # Vocab.to_dict()
    region_config: dict[str, Any]  # RegionConfig of the features it was trained on
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)  # epoch, optimizer, rng... (resume)
    format_version: int = FORMAT_VERSION


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write atomically (temp file in the same directory, then rename): a crash mid-save leaves
    the previous file intact."""
    path = Path(path)
    blob = {
        "format_version": ckpt.format_version,
        "kind": ckpt.kind,
        # JSON strings keep the header free of anything weights_only would refuse.
        "header_json": json.dumps({"config": ckpt.config, "vocab": ckpt.vocab,
                                   "region_config": ckpt.region_config, "metrics": ckpt.metrics}),
        "state_dict": ckpt.state_dict,
        "train_state": ckpt.train_state,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def save_model(kind: str, model: torch.nn.Module, vocab: Any, region_cfg: Any, path: str | Path,
               metrics: dict | None = None, train_state: dict | None = None,
               state_dict: dict[str, torch.Tensor] | None = None, half: bool = False) -> Path:
    """Write a model with its config (`model.cfg`), vocabulary and feature-extractor config.
    `state_dict` overrides the model's own weights (a trainer saves its best epoch's weights while it
    trains on); half=True stores floating weights as float16 (half the file; loading casts them back)."""
    sd = state_dict if state_dict is not None else model.state_dict()
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    return save(Checkpoint(kind=kind, config=to_dict(model.cfg), vocab=vocab.to_dict(),
                           region_config=to_dict(region_cfg),
                           state_dict={k: v.detach().cpu().clone() for k, v in sd.items()},
                           metrics=metrics or {}, train_state=train_state or {}), path)


def load(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "not loadable"
        if "weights_only" in str(e) or "Weights only" in str(e):
            why = "torch.load with weights_only=True cannot read it"
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise ModelError(f"{path}: not a vsa model file: expected a checkpoint written by `vsa train` "
                         f"(a PyTorch zip file), torch says: {why}") from None
    if not isinstance(blob, dict) or "kind" not in blob or "header_json" not in blob:
        raise ModelError(f"{path}: not a vsa model file: a PyTorch file, but without the kind and header "
                         "that `vsa train` writes")
    if blob.get("format_version") not in READS:
        raise ModelError(f"{path}: model format {blob.get('format_version')}, this version reads "
                         f"{', '.join(map(str, READS[:-1]))} and {READS[-1]}")
    if kind is not None and blob["kind"] != kind:
        def a(word: str) -> str:
            return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"

        raise ModelError(f"{path}: this is {a(blob['kind'])} model; {a(kind)} model is needed here")
    header = json.loads(blob["header_json"])
    return Checkpoint(kind=blob["kind"], config=header["config"], vocab=header["vocab"],
                      region_config=header["region_config"], state_dict=blob["state_dict"],
                      metrics=header.get("metrics", {}), train_state=blob.get("train_state", {}),
                      format_version=blob["format_version"])


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, path: str | Path) -> None:
    """Put a checkpoint's weights into a model built from its config; a mismatch is a ModelError."""
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit the saved config ({str(e).splitlines()[0][:120]})") from None


def load_grown(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], rows: int, path: str | Path,
               fresh: tuple[str, ...] = ()) -> None:
    """Start `model` from the weights of a model whose vocabulary was its first `rows` words: tensors
    indexed by word (embeddings, the output layer) keep the model's own initialisation in the rows of
    the words added since (Vocab.extend); every other tensor must match in shape. Tensors whose names
    start with one of `fresh` may be missing from `state_dict` (parts the other kind of model lacks):
    they keep the model's own initialisation; tensors only `state_dict` has are left out."""
    own = model.state_dict()
    merged = {}
    for k, mine in own.items():
        src = state_dict.get(k)
        if src is None and k.startswith(fresh or ("\0",)):
            merged[k] = mine
            continue
        if src is None:
            raise ModelError(f"{path}: has no {k}; it is another kind of model than the one trained here")
        src = src.to(mine.dtype)
        if src.shape == mine.shape:
            merged[k] = src
        elif src.shape[0] == rows and src.shape[1:] == mine.shape[1:] and mine.shape[0] > rows:
            merged[k] = torch.cat([src, mine[rows:].detach().cpu()])
        else:
            raise ModelError(f"{path}: {k} is {tuple(src.shape)}, the model trained here needs {tuple(mine.shape)}")
    model.load_state_dict(merged)
