"""Query words -> word vectors s_t in numpy: the search-time text path.

A search encodes one short sentence, and importing torch costs more than everything else a
cold `vsa search` does, so queries run the sentence encoder (the BRNN of encoders.py, ReLU or
GRU cell) and, for the hybrid arch, the global members' word encoders here, with the same
normalisation and pooling as AlignModel.encode_words. The weights come from a loaded model
(`from_loaded`) or from an export written once per model fingerprint (`export` / `cached`): a
small versioned file in the cache folder, memory-mapped on load, so a later search needs no torch
and reads only the rows of the words it encodes. tests/test_textenc.py holds the two encoders
equal on 1,000 sentences.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import arrayfile, paths
from ..core.config import EmbedConfig, from_dict, to_dict
from ..core.errors import ModelError
from ..data.vocab import Vocab

FORMAT_VERSION = 2  # 2: written through core/arrayfile


@dataclass
class TextEncoder:
    """The text half of an alignment model. Duck-types what search reads from a LoadedAlign:
    vocab, config, metrics, path, fingerprint."""

    config: EmbedConfig
    vocab: Vocab
    weights: dict[str, np.ndarray]
    fingerprint: str
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        return self.config.hidden

    @property
    def out_dim(self) -> int:
        if self.config.arch == "global":
            return self.config.hidden
        return self.config.hidden * (1 + (self.config.global_members if self.config.arch == "hybrid" else 0))

    def _w(self, name: str) -> np.ndarray:
        """A weight as float32 (converted once: a loaded file keeps float16 weights memory-mapped)."""
        w = self.weights[name]
        if w.dtype != np.float32:
            w = self.weights[name] = np.asarray(w, np.float32)
        return w

    def _rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of an embedding table, without converting (or reading) the rest of it."""
        return np.asarray(self.weights[name][ids], np.float32)

    def encode_ids(self, ids: list[int]) -> np.ndarray:
        """One sentence's word ids -> (T, out_dim) float32, as AlignModel.encode_words gives them."""
        ids_a = np.asarray(ids, np.int64)
        if self.config.arch == "global":
            return self._global("", ids_a)
        s = self._brnn(ids_a)
        if self.config.normalize:
            s = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-12)
        if self.config.pool == "mean":
            s = s / np.float32(max(len(ids_a), 1))
        if self.config.arch == "hybrid":
            members = ["glob."] + [f"glob_extra.{j}." for j in range(self.config.global_members - 1)]
            s = np.concatenate([s, *(self._global(m, ids_a) for m in members)], axis=-1)
        return s.astype(np.float32, copy=False)

    def encode(self, token_lists: list[list[str]]) -> list[np.ndarray]:
        return [self.encode_ids(self.vocab.encode(t)) for t in token_lists]

    def _brnn(self, ids: np.ndarray) -> np.ndarray:
        w = self._w
        x = self._rows("sentence.embed.weight", ids)
        e = np.maximum(x @ w("sentence.w_e.weight").T + w("sentence.w_e.bias"), 0)
        fwd = self._rnn(e, "")
        bwd = self._rnn(e[::-1], "_reverse")[::-1]
        s = (fwd + bwd) @ w("sentence.w_d.weight").T + w("sentence.w_d.bias")
        return np.maximum(s, 0) if self.config.word_relu else s

    def _rnn(self, x: np.ndarray, sfx: str) -> np.ndarray:
        """One direction of torch's nn.RNN (ReLU) or nn.GRU over x (T, h), from a zero state."""
        w = self._w
        wih, whh = w(f"sentence.rnn.weight_ih_l0{sfx}"), w(f"sentence.rnn.weight_hh_l0{sfx}")
        bih, bhh = w(f"sentence.rnn.bias_ih_l0{sfx}"), w(f"sentence.rnn.bias_hh_l0{sfx}")
        xs = x @ wih.T + bih  # (T, h) or (T, 3h): the input side of every step at once
        h = np.zeros(wih.shape[0] // (3 if self.config.rnn == "gru" else 1), np.float32)
        out = np.empty((len(x), len(h)), np.float32)
        for t in range(len(x)):
            if self.config.rnn == "gru":  # gates in torch's order: reset, update, new
                hh = whh @ h + bhh
                n_ = len(h)
                r = _sigmoid(xs[t, :n_] + hh[:n_])
                z = _sigmoid(xs[t, n_:2 * n_] + hh[n_:2 * n_])
                n = np.tanh(xs[t, 2 * n_:] + r * hh[2 * n_:])
                h = (1 - z) * n + z * h
            else:
                h = np.maximum(xs[t] + (whh @ h + bhh), 0)
            out[t] = h
        return out

    def _global(self, prefix: str, ids: np.ndarray) -> np.ndarray:
        """GlobalModel.encode_words: Σ_t s_t is the sentence's (unit) mean-word vector."""
        w = self._w
        s = self._rows(f"{prefix}embed.weight", ids) @ w(f"{prefix}proj.weight").T + w(f"{prefix}proj.bias")
        if self.config.normalize:
            return s / max(float(np.linalg.norm(s.sum(0))), 1e-8)
        return s / np.float32(max(len(ids), 1))

    # ----------------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """One array file (core/arrayfile: memory-mapped on load). Word tables are stored as float16
        where that loses nothing (a query reads a few rows of them); the matrices every query
        multiplies by stay float32."""
        arrays = {}
        for k, v in self.weights.items():
            h = v.astype(np.float16)
            small = k.endswith("embed.weight") and np.array_equal(h.astype(np.float32), v)
            arrays[k] = np.ascontiguousarray(h if small else v, np.float16 if small else np.float32)
        header = {"kind": "text-encoder", "format_version": FORMAT_VERSION, "config": to_dict(self.config),
                  "vocab": self.vocab.to_dict(), "fingerprint": self.fingerprint, "path": str(self.path),
                  "metrics": _plain(self.metrics), "source": arrayfile.stamp(self.path)}
        return arrayfile.save(path, header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> TextEncoder:
        try:
            header, weights = arrayfile.load(path)
            if header.get("kind") != "text-encoder":
                raise ValueError("not a text encoder file")
            if header.get("format_version") != FORMAT_VERSION:
                raise ModelError(f"{path}: text encoder format {header.get('format_version')}, "
                                 f"this version reads {FORMAT_VERSION}")
            enc = cls(from_dict(EmbedConfig, header["config"]), Vocab.from_dict(header["vocab"]), weights,
                      header["fingerprint"], Path(header["path"]), header.get("metrics", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{path}: not a readable text encoder ({type(e).__name__})") from None
        enc.source = header.get("source")  # type: ignore[attr-defined]
        return enc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a model's metrics (search reads only bridge_weight from them)."""
    return json.loads(json.dumps(d, default=lambda _: None))


def from_loaded(loaded: Any) -> TextEncoder:
    """The numpy text encoder of a loaded (torch) alignment model; one per model object."""
    enc = getattr(loaded, "_text_encoder", None)
    if enc is None or enc.fingerprint != loaded.fingerprint:
        sd = loaded.model.state_dict()
        # The word side only: the image encoders (image.*, glob.image.*) stay behind.
        weights = {k: v.detach().float().cpu().numpy() for k, v in sd.items()
                   if not (k.startswith("image.") or ".image." in k)}
        # An absolute path: a later search, from any folder, compares it with the file it would load.
        enc = TextEncoder(loaded.config, loaded.vocab, weights, loaded.fingerprint,
                          Path(os.path.abspath(loaded.path)), dict(loaded.metrics or {}))
        try:
            object.__setattr__(loaded, "_text_encoder", enc)
        except AttributeError:
            pass
    return enc


def query_encoder(model: Any) -> TextEncoder:
    """The numpy encoder for a model given either way (a TextEncoder or a LoadedAlign)."""
    return model if isinstance(model, TextEncoder) else from_loaded(model)


# --------------------------------------------------------------------------- the export cache


def cache_path(fingerprint: str) -> Path:
    return paths.cache_dir() / "text-encoders" / f"v{FORMAT_VERSION}-{fingerprint}.bin"


def cached(model_path: str | Path, fingerprint: str) -> TextEncoder | None:
    """The export of the model with this fingerprint, if there is one and it came from `model_path`
    as that file is now (same size and mtime); else None (the caller loads the model itself)."""
    p = cache_path(fingerprint)
    if not p.is_file():
        return None
    try:
        enc = TextEncoder.load(p)
    except ModelError:
        return None
    same_file = Path(os.path.realpath(model_path)) == Path(os.path.realpath(enc.path))
    if enc.fingerprint != fingerprint or not same_file or getattr(enc, "source", None) != arrayfile.stamp(model_path):
        return None
    return enc


def export(loaded: Any) -> TextEncoder:
    """Write a loaded model's text encoder to the cache (once per fingerprint); returns it. A cache
    that cannot be written is no error: search then loads the model each time, as before."""
    enc = from_loaded(loaded)
    p = cache_path(enc.fingerprint)
    if cached(enc.path, enc.fingerprint) is None:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            enc.save(p)
        except OSError:
            pass
    return enc
