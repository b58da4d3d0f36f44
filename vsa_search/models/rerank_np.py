"""S'(photo, sentence) of an alignment model in numpy, for re-ranking `vsa caption`'s beams without
torch: the model's image side (ImageEncoder, and a hybrid's global image encoders), its text side
(textenc.TextEncoder, the search-time encoder) and, for the querybank offset, the bank photos' region
vectors, which depend on the model alone and are computed once, with torch, when the model is
exported into the cache (core/arrayfile). The sentences of the bank are not needed at all: a
sentence's offset scores it against the bank's photos only. A model of a fine-tuned CNN top's features
carries that top ("cnn." entries, as in the model file): the caption path runs it (vision/cnn.py).
tests/test_decode_np.py holds the scores equal to captioning/rerank.alignment_scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import arrayfile
from ..core.config import EmbedConfig, RegionConfig, check_carried_top, from_dict, to_dict
from ..data.vocab import UNK, Vocab
from . import score
from .textenc import TextEncoder

_BANK = "bank."  # the bank photos' vectors: bank.part (P, R, h - shared), bank.glob (P, shared), bank.mask (P, R)
_TOP = "cnn."  # the fine-tuned CNN top's weights (alignment.TOP_PREFIX; that module imports torch)


def _normalize(x: np.ndarray) -> np.ndarray:
    """torch's F.normalize: x / max(|x|, 1e-12) along the last axis."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


@dataclass
class NumpyAlign:
    """What re-ranking reads of a LoadedAlign (region_config, path), and the scores it computes."""

    weights: dict[str, np.ndarray]
    vocab: Vocab
    config: EmbedConfig
    region_config: RegionConfig
    path: Path
    metrics: dict
    bank: dict[str, Any] | None  # {"beta", "weight"} of the querybank, when the model has one
    top: dict[str, np.ndarray] | None = None  # the fine-tuned CNN top region_config.top names (timm names)
    text: TextEncoder = field(init=False)

    def __post_init__(self) -> None:
        text = {k: v for k, v in self.weights.items() if not (k.startswith("image.") or ".image." in k
                                                                 or k.startswith(_BANK))}
        self.text = TextEncoder(self.config, self.vocab, text, "", self.path, self.metrics)

    def _image(self, prefix: str, feats: np.ndarray) -> np.ndarray:
        """encoders.ImageEncoder: (R, D) -> (R, h)."""
        w = self.weights
        x = feats
        if self.config.feat_norm == "l2":
            x = _normalize(x) * np.float32(x.shape[-1] ** 0.5)
        if f"{prefix}mlp.0.weight" in w:
            x = np.maximum(x @ w[f"{prefix}mlp.0.weight"].T + w[f"{prefix}mlp.0.bias"], np.float32(0.0))
        return x @ w[f"{prefix}proj.weight"].T + w[f"{prefix}proj.bias"]

    def encode_regions(self, features: np.ndarray) -> np.ndarray:
        """AlignModel.encode_regions (GlobalModel's for arch "global") of one photo: (R, D) -> (R', out_dim)."""
        feats = np.asarray(features, np.float32)
        if self.config.arch == "global":
            v = self._image("image.", feats[:1])
            return _normalize(v) if self.config.normalize else v
        if self.config.regions == "full":
            feats = feats[:1]
        v = self._image("image.", feats)
        v = _normalize(v) if self.config.normalize else v
        if self.config.arch == "hybrid":
            members = ["glob."] + [f"glob_extra.{j}." for j in range(self.config.global_members - 1)]
            us = []
            for m in members:
                u = self._image(f"{m}image.", feats[:1])
                us.append(np.broadcast_to(_normalize(u) if self.config.normalize else u, (len(v), u.shape[1])))
            v = np.concatenate([v, *us], axis=-1)
        return v

    def scores(self, features: np.ndarray, texts: list[str]) -> np.ndarray:
        """S'(photo, text) for one photo's (R, D) CNN features and each of `texts`
        (rerank.alignment_scores)."""
        v = self.encode_regions(features)
        s = [self.text.encode_ids(self.vocab.encode_text(t) or [UNK]) for t in texts]
        got = score.sentence_scores(np.concatenate(s) @ v.T, score.starts_of([len(x) for x in s])).astype(np.float32)
        if self.bank is not None:
            got = got - self._offsets(s)
        return got

    def _offsets(self, sentences: list[np.ndarray]) -> np.ndarray:
        """querybank.sentence_offsets: w/β · log Σ_photos exp(β · S(bank photo, sentence))."""
        part, glob, mask = self.weights[_BANK + "part"], self.weights[_BANK + "glob"], self.weights[_BANK + "mask"]
        p, r, hd = part.shape
        words = np.concatenate(sentences)  # (W, out_dim)
        dots = words[:, :hd] @ part.reshape(p * r, hd).T  # (W, P*R): the bank photos one after another
        dots[:, ~mask.reshape(-1).astype(bool)] = -np.inf
        best = score.best_per_item(dots, np.arange(p) * r)  # (W, P)
        got = np.add.reduceat(best, score.starts_of([len(x) for x in sentences]), axis=0).T  # (P, L)
        if glob.shape[1]:
            sums = np.stack([x[:, hd:].sum(0) for x in sentences])  # (L, shared)
            got = got + glob @ sums.T
        beta, weight = np.float32(self.bank["beta"]), np.float32(self.bank["weight"])
        z = beta * got
        m = z.max(0)
        return weight * (m + np.log(np.exp(z - m).sum(0))) / beta


def load_align(path: str | Path) -> NumpyAlign:
    """An alignment model file for re-ranking, from its export in the cache; exported first (with
    torch) when there is none for the file as it is now."""
    got = arrayfile.cached_export("rerank", path)
    # an export made before exports carried the CNN top lacks it: made again
    if got is None or got[0].get("top", "") != got[0]["region_config"].get("top", ""):
        got = _export(path)
    header, arrays = got
    region_cfg = from_dict(RegionConfig, header["region_config"])
    top = {k[len(_TOP):]: v for k, v in arrays.items() if k.startswith(_TOP)}
    check_carried_top(region_cfg, top, path)
    return NumpyAlign({k: v for k, v in arrays.items() if not k.startswith(_TOP)}, Vocab.from_dict(header["vocab"]),
                      from_dict(EmbedConfig, header["config"]), region_cfg, Path(path), header["metrics"],
                      header.get("bank"), top or None)


def _export(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import json

    import torch

    from .alignment import load_align as torch_load

    loaded = torch_load(path)
    arrays = {k: v.detach().float().cpu().numpy() for k, v in loaded.model.state_dict().items()}
    bank = None
    if loaded.querybank is not None:
        with torch.inference_mode():
            vb, mask = loaded.querybank.regions(loaded.model, "cpu")
        part, glob = score.split(vb, score.shared_width(loaded.model))
        arrays[_BANK + "part"] = part.float().contiguous().numpy()
        arrays[_BANK + "glob"] = glob[:, 0].float().contiguous().numpy()
        arrays[_BANK + "mask"] = mask.numpy().astype(np.uint8)
        bank = {"beta": loaded.querybank.beta, "weight": loaded.querybank.weight}
    arrays.update({_TOP + k: np.asarray(v, np.float16) for k, v in (loaded.top or {}).items()})
    header = {"top": loaded.region_config.top, "config": to_dict(loaded.config), "vocab": loaded.vocab.to_dict(),
              "region_config": to_dict(loaded.region_config),
              "metrics": json.loads(json.dumps(loaded.metrics or {}, default=lambda _: None)), "bank": bank}
    arrayfile.write_export("rerank", path, header, arrays)
    return header, arrays
