"""The caption generator and its beam search (captioner.py, beam.py) in numpy, for `vsa caption` on
the CPU: a new process that describes a photo or two would spend longer importing torch than
decoding. The weights are the model file's own (float32, as torch holds them), exported once into
the cache (core/arrayfile; the first run needs torch to make it). Every step is the torch one's, op
for op: the ensemble's mean of probabilities, the log-softmax after it, the barred words, END
barred at the first step and forced after max_len words, the top `beam` of beam x vocabulary, and
the same stop rule; tests/test_decode_np.py holds the candidates equal to beam.py's. The attention
generator (attention.py) steps here too, alone or in an ensemble with LSTMs: its state carries the
projected regions and their mask, reordered with the rest as the beam moves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import arrayfile
from ..core.config import DEFAULT_BEAM, CaptionConfig, RegionConfig, from_dict, to_dict
from ..core.errors import UsageError
from ..data.vocab import END, PAD, START, UNK, Vocab

BANNED = (PAD, START, UNK)
# Exports of caption models: the "2" keys them apart from those of the decoder before attention generators
# (it would misread one), so each decoder reads only exports it made.
EXPORT_KIND = "caption2"


@dataclass
class Caption:
    tokens: list[int]  # word ids, without START/END
    logprob: float  # log P(words, END | image)
    score: float  # what the beam ranked by: logprob / (len+1)^length_norm

    @classmethod
    def ranked(cls, tokens: list[int], logprob: float, length_norm: float) -> Caption:
        """A finished sentence with the score a beam of this length normalisation ranks it by."""
        return cls(tokens, logprob, logprob / (len(tokens) + 1) ** length_norm)


def best(finished: list[Caption]) -> Caption:
    """The finished sentence beam search ranks first (by its score)."""
    return max(finished, key=lambda c: c.score)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def _lstm(g: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM's new (h, c) from its gate pre-activations g (N, 4H), split i, f, o, u as in torch."""
    i, f, o, u = np.split(g, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(u)
    return _sigmoid(o) * np.tanh(c), c


def photo_input(features: Any, cfg: CaptionConfig) -> np.ndarray:
    """captioner.photo_input in numpy: a RegionFeatures' full-image vector (D,), or for a generator that
    attends its first cfg.regions region vectors (R, D), full frame first, padded with zero rows."""
    if not cfg.attends:
        return np.asarray(features.features[0], np.float32)
    rows = np.asarray(features.features[:cfg.regions], np.float32)
    return np.concatenate([rows, np.zeros((cfg.regions - len(rows), rows.shape[1]), np.float32)])


@dataclass
class NumpyCaptioner:
    """A caption model file in numpy; what `vsa caption` reads of a LoadedCaptioner, without torch."""

    weights: dict[str, np.ndarray]
    vocab: Vocab
    config: CaptionConfig
    region_config: RegionConfig
    path: Path
    metrics: dict

    @property
    def prefixes(self) -> list[str]:
        n = self.config.members
        return [f"members.{j}." for j in range(n)] if n > 1 else [""]

    @property
    def cells(self) -> tuple[str, ...]:
        """Each member's cell (an ensemble's differ when config.member_cells says so)."""
        c = self.config
        return (c.member_cells or (c.cell,) * c.members) if c.members > 1 else (c.cell,)

    def init_state(self, feats: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """(B, D) features, or (B, R, D) region vectors (photo_input) -> each member's state: (h, c, b_v)
        for an LSTM, (h, b_v) for the RNN (both read row 0 of region vectors), (h, c, projected regions,
        mask) for the attention generator."""
        out = []
        for p, cell in zip(self.prefixes, self.cells, strict=True):
            if cell == "attend":
                out.append(self._attend_init(p, feats))
                continue
            full = feats[:, 0] if feats.ndim == 3 else feats
            b_v = full @ self.weights[p + "w_hi.weight"].T + self.weights[p + "w_hi.bias"]
            h = np.zeros((len(full), self.config.hidden), np.float32)
            out.append((h, np.zeros_like(h), b_v) if cell == "lstm" else (h, b_v))
        return out

    def _attend_init(self, p: str, feats: np.ndarray) -> tuple[np.ndarray, ...]:
        """attention.AttendCaptioner.init_state: the regions projected once, the mean real one the start."""
        w = self.weights
        v = feats[:, None] if feats.ndim == 2 else feats  # a lone vector is a one-row photo
        mask = np.abs(v).sum(-1) > 0  # padding rows are all zero
        mask[:, 0] = True  # the full frame is always there
        proj = v @ w[p + "w_p.weight"].T + w[p + "w_p.bias"]  # (B, R, A)
        m = mask[..., None].astype(np.float32)
        mean = (proj * m).sum(1) / m.sum(1)
        h, c = np.split(np.tanh(mean @ w[p + "w_init.weight"].T + w[p + "w_init.bias"]), 2, axis=-1)
        return (h, c, proj, mask)

    def _attend_step(self, p: str, gx: np.ndarray, st: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """attention.AttendCaptioner._cell: attend with the previous h, then the LSTM on word and context."""
        w = self.weights
        h, c, proj, mask = st
        e = (np.tanh(proj + (h @ w[p + "w_a.weight"].T)[:, None]) @ w[p + "att_v.weight"].T)[..., 0]  # (N, R)
        e = np.where(mask, e, np.float32(-np.inf))
        alpha = np.exp(e - e.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        z = (alpha[:, None] @ proj)[:, 0]  # (N, A) the attended context
        z = _sigmoid(h @ w[p + "w_beta.weight"].T + w[p + "w_beta.bias"]) * z
        h, c = _lstm(gx + z @ w[p + "w_z.weight"].T + h @ w[p + "w_hh.weight"].T, c)
        return (h, c, proj, mask)

    def step(self, tokens: np.ndarray, state: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, list]:
        """tokens (N,) -> (N, V) log-probabilities of the next word (of the members' mean probability
        for an ensemble; the logits of a single model) and the new state."""
        outs, new = [], []
        for p, cell, st in zip(self.prefixes, self.cells, state, strict=True):
            w = self.weights
            gx = w[p + "embed.weight"][tokens] @ w[p + "w_hx.weight"].T + w[p + "w_hx.bias"]
            if cell == "attend":
                st = self._attend_step(p, gx, st)
            elif cell == "lstm":
                h, c, b_v = st
                h, c = _lstm(gx + h @ w[p + "w_hh.weight"].T + b_v, c)
                st = (h, c, np.zeros_like(b_v))
            else:
                h, b_v = st
                h = np.maximum(gx + h @ w[p + "w_hh.weight"].T + b_v, np.float32(0.0))
                st = (h, np.zeros_like(b_v))
            outs.append(st[0] @ w[p + "w_oh.weight"].T + w[p + "w_oh.bias"])
            new.append(st)
        if len(outs) == 1:
            return outs[0], new
        logps = np.stack([_log_softmax(o) for o in outs])  # (M, N, V)
        m = logps.max(0)
        mean = m + np.log(np.exp(logps - m).sum(0)) - np.float32(np.log(len(outs)))
        return mean.astype(np.float32), new


def _step_logprobs(model: NumpyCaptioner, tokens: np.ndarray, state: list, t: int, max_len: int):
    logits, state = model.step(tokens, state)
    logp = _log_softmax(logits.astype(np.float32))
    logp[:, list(BANNED)] = -np.inf
    if t == 0:
        logp[:, END] = -np.inf  # at least one word
    if t == max_len:
        keep = logp[:, END].copy()  # after max_len words the only move is END
        logp.fill(-np.inf)
        logp[:, END] = keep
    return logp, state


def beam_candidates(model: NumpyCaptioner, feats: np.ndarray, beam: int = DEFAULT_BEAM, max_len: int = 20,
                    length_norm: float = 0.0, stop_at_best: bool = False) -> list[list[Caption]]:
    """beam.beam_candidates in numpy: every sentence the beam finished per image, in order. feats (B, D),
    or (B, R, D) region vectors (photo_input)."""
    if beam < 1:
        raise UsageError(f"beam size must be >= 1, got {beam}")
    if max_len < 1:
        raise UsageError(f"max length must be >= 1, got {max_len}")
    feats = np.asarray(feats, np.float32)
    B, K = feats.shape[0], beam
    state = [tuple(np.repeat(s, K, axis=0) for s in st) for st in model.init_state(feats)]  # (B*K, ...)
    tokens = np.full(B * K, START, np.int64)
    scores = np.full((B, K), -np.inf, np.float32)
    scores[:, 0] = 0.0  # one open hypothesis per image to begin with
    history = np.zeros((B, K, 0), np.int64)
    finished: list[list[Caption]] = [[] for _ in range(B)]
    for t in range(max_len + 1):
        logp, state = _step_logprobs(model, tokens, state, t, max_len)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.reshape(B, K, V)).reshape(B, K * V)
        idx = np.argpartition(-cand, K - 1, axis=1)[:, :K]
        idx = np.take_along_axis(idx, np.argsort(-np.take_along_axis(cand, idx, 1), axis=1, kind="stable"), 1)
        top = np.take_along_axis(cand, idx, 1)  # (B, K), best first
        parent, word = idx // V, idx % V
        ended = (word == END) & np.isfinite(top)
        for b, k in zip(*np.nonzero(ended)):
            words = history[b, parent[b, k]].tolist()
            lp = float(top[b, k])
            finished[b].append(Caption.ranked(words, lp, length_norm))
        scores = np.where(ended | ~np.isfinite(top), np.float32(-np.inf), top).astype(np.float32)
        history = np.concatenate([history[np.arange(B)[:, None], parent], word[:, :, None]], axis=2)
        flat = (parent + np.arange(B)[:, None] * K).reshape(-1)
        state = [tuple(s[flat] for s in st) for st in state]
        tokens = word.reshape(-1)
        if stop_at_best and length_norm == 0.0:
            best_open = scores.max(axis=1)
            for b, f in enumerate(finished):
                if f and max(c.score for c in f) >= best_open[b]:
                    scores[b] = -np.inf
        if not np.isfinite(scores).any():
            break
    return finished


def generate_candidates(model: NumpyCaptioner, feats: np.ndarray, beam: int = DEFAULT_BEAM, max_len: int | None = None,
                        length_norm: float = 0.0, stop_at_best: bool = False) -> list[list[Caption]]:
    """beam.generate_candidates for a NumpyCaptioner (one batch: `vsa caption` describes few photos)."""
    return beam_candidates(model, feats, beam=beam, max_len=max_len or model.config.max_len,
                           length_norm=length_norm, stop_at_best=stop_at_best)


def load_caption(path: str | Path) -> NumpyCaptioner:
    """A caption model file from its export in the cache, exported first (with torch) when there is
    none for the file as it is now."""
    got = arrayfile.cached_export(EXPORT_KIND, path)
    if got is None:
        from .captioner import load_caption as torch_load

        loaded = torch_load(path)
        header = {"config": to_dict(loaded.config), "vocab": loaded.vocab.to_dict(),
                  "region_config": to_dict(loaded.region_config), "metrics": _plain(loaded.metrics)}
        arrays = {k: v.detach().float().cpu().numpy() for k, v in loaded.model.state_dict().items()}
        arrayfile.write_export(EXPORT_KIND, path, header, arrays)
        got = header, arrays
    header, arrays = got
    return NumpyCaptioner(arrays, Vocab.from_dict(header["vocab"]), from_dict(CaptionConfig, header["config"]),
                          from_dict(RegionConfig, header["region_config"]), Path(path), header["metrics"])


def _plain(d: Any) -> Any:
    """The JSON-able part of a model's metrics."""
    import json

    return json.loads(json.dumps(d or {}, default=lambda _: None))
