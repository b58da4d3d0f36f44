"""Querybank normalisation of alignment scores (Bogolin et al., "Cross Modal Retrieval with Querybank
Normalisation", CVPR 2022): a few photos come up for almost every sentence ("hubs"), and a few
sentences for almost every photo. Each photo's score is lowered by how well it matches a bank of
training sentences, each sentence's by how well it matches a bank of training photos:

    S'(p, s) = S(p, s) - w/β · log Σ_b exp(β·S(p, b_sent)) - w/β · log Σ_b exp(β·S(b_photo, s))

A photo's offset ranks photos for a sentence (text -> photo search) and a sentence's offset ranks
sentences for a photo (image annotation); neither changes the other direction's order. The bank
comes from the training split only and travels inside the model file, so an index computes each
photo's offset once, when it stores the photo."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .score import flat_words, score_words, shared_width, split_words, word_mask

PREFIX = "querybank."  # its tensors sit in the model file's state dict under this prefix


@dataclass
class QueryBank:
    """Training sentences (word ids) and training photos to normalise scores with. sent_ids (K, T) long,
    sent_lengths (K,) long, photo_mask (P, R) bool, and the photos either as CNN features, photo_feats
    (P, R, D), or as their region vectors under the model (see encoded): photo_parts (P, R, H), each region's
    own part, and photo_shared (P, S), the part the same for every region of a photo (None when S is 0).
    bits: how a model file stores photo_parts, 8 or 4 (4 fits twice the photos; the rest is always 8)."""

    beta: float
    weight: float
    sent_ids: torch.Tensor
    sent_lengths: torch.Tensor
    photo_feats: torch.Tensor | None
    photo_mask: torch.Tensor
    photo_parts: torch.Tensor | None = None
    photo_shared: torch.Tensor | None = None
    bits: int = 8
    # Bank vectors under the model, per (what, device): computed once, as an index build scores every photo
    # against them. Keyed by the device as given, so that "cuda" does not miss a tensor on "cuda:0".
    _cache: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    @torch.no_grad()
    def split_words(self, model: torch.nn.Module, device: torch.device | str, shared: int,
                    chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """The bank's real words (no padding) as score.split_words has them: each word's own part (W, h -
        shared), contiguous, the sentence of each (W,), the number of sentences, and each sentence's
        global part summed (K, shared). Encoded `chunk` sentences at a time (all at once, padded, 2,000
        sentences took 0.4 GB) and kept, with no autograd graph: an index build scores every photo
        against them."""
        key = ("split", str(device))
        if key not in self._cache:
            parts, sents, globs = [], [], []
            for a in range(0, len(self.sent_ids), chunk):
                lengths = self.sent_lengths[a : a + chunk].to(device)
                s = model.encode_words(self.sent_ids[a : a + chunk, : int(lengths.max())].to(device), lengths)
                words, sent = flat_words(s, word_mask(lengths, s.shape[1]))
                part, glob = split_words(words, sent, len(s), shared)
                parts.append(part)
                sents.append(sent + a)
                globs.append(glob)
            self._cache[key] = (torch.cat(parts), torch.cat(sents), len(self.sent_ids), torch.cat(globs))
        return self._cache[key]

    @torch.no_grad()
    def regions(self, model: torch.nn.Module, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank photos' region vectors and mask under `model` (a bank of vectors holds them already)."""
        key = ("regions", str(device))
        if key not in self._cache:
            if self.photo_parts is None:
                vb = model.encode_regions(self.photo_feats.to(device))
            else:
                vb = self.photo_parts.to(device)
                if self.photo_shared is not None:
                    shared = self.photo_shared.to(device)[:, None, :].expand(-1, vb.shape[1], -1)
                    vb = torch.cat([vb, shared], dim=2)
            self._cache[key] = (vb, self.photo_mask.to(device)[:, : vb.shape[1]])
        return self._cache[key]

    @torch.no_grad()
    def encoded(self, model: torch.nn.Module, bits: int = 8) -> QueryBank:
        """The same bank holding its photos' region vectors under `model` instead of their CNN features, as a
        model file stores them: each region's own part in `bits` (8 or 4), and once a photo, in 8 bits, the
        part its regions share (a hybrid model's global terms). The ensemble's 1,536-d vectors then take 11 KB
        a photo (6.2 KB with 4 bits) against 25.6 KB of 1,280-d features, so more photos fit a model file; the
        bank is then that model's alone."""
        if self.photo_feats is None:
            return self
        if bits not in (4, 8):
            raise ValueError(f"a bank's vectors are stored in 8 or 4 bits, not {bits}")
        device = next(model.parameters()).device
        vb = model.encode_regions(self.photo_feats.to(device)).cpu()
        own = vb.shape[2] - shared_width(model)
        if bits == 4 and own % 2:
            raise ValueError(f"4-bit vectors pack two codes a byte: {own} dimensions do not")
        shared = stored(vb[:, 0, own:]) if own < vb.shape[2] else None
        return dataclasses.replace(self, photo_feats=None, photo_parts=stored(vb[:, :, :own], bits),
                                   photo_shared=shared, bits=bits, _cache={})

    def header(self) -> dict[str, Any]:
        return {"beta": self.beta, "weight": self.weight, "sentences": int(len(self.sent_ids)),
                "photos": int(len(self.photo_mask)), "bits": self.bits}

    def to_state(self) -> dict[str, torch.Tensor]:
        # 8 or 4 bits: the bank is most of the file's size otherwise (1,000 photos' vectors: 22.5 MB in float16)
        state = {PREFIX + "sent_ids": self.sent_ids.to(torch.int32), PREFIX + "sent_lengths": self.sent_lengths,
                 PREFIX + "photo_mask": self.photo_mask}
        arrays = {"photo": self.photo_feats} if self.photo_parts is None else \
            {"photo_parts": self.photo_parts, "photo_shared": self.photo_shared}
        for name, values in arrays.items():
            if values is not None:
                bits = self.bits if name == "photo_parts" else 8
                codes, low, step = quantize(values, bits)
                # 4 bits: two codes a byte, under a name of their own so that no reader takes them for 8
                key, kept = (name + "_codes", codes) if bits == 8 else (name + "_codes4", pack4(codes))
                state.update({PREFIX + key: kept, PREFIX + name + "_low": low, PREFIX + name + "_step": step})
        return state

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], header: dict[str, Any]) -> QueryBank:
        def read(name: str) -> torch.Tensor | None:
            if PREFIX + name + "_codes4" in state:
                codes = unpack4(state[PREFIX + name + "_codes4"])
            elif PREFIX + name + "_codes" in state:
                codes = state[PREFIX + name + "_codes"]
            else:
                return None
            return dequantize(codes, state[PREFIX + name + "_low"], state[PREFIX + name + "_step"])

        parts, feats = read("photo_parts"), read("photo")
        if parts is None and feats is None:  # model format 1: float16 features
            feats = state[PREFIX + "photo_feats"].float()
        return cls(float(header["beta"]), float(header["weight"]), state[PREFIX + "sent_ids"].long(),
                   state[PREFIX + "sent_lengths"].long(), feats, state[PREFIX + "photo_mask"].bool(),
                   photo_parts=parts, photo_shared=read("photo_shared"),
                   bits=4 if PREFIX + "photo_parts_codes4" in state else 8)


def quantize(feats: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., D) features -> codes (..., D) uint8 and each vector's float16 low end and step (..., 1):
    2**bits even levels between the vector's own minimum and maximum."""
    top = 2**bits - 1
    feats = feats.float()
    low = feats.amin(-1, keepdim=True).half()
    # float16's smallest normal step keeps a constant vector (a padded region) exact and the division finite
    step = ((feats.amax(-1, keepdim=True) - low.float()) / top).clamp_min(2.0**-14).half()
    codes = ((feats - low.float()) / step.float()).round().clamp(0, top).to(torch.uint8)
    return codes, low, step


def pack4(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (..., D), D even -> (..., D/2) bytes, two codes each."""
    return codes[..., 0::2] << 4 | codes[..., 1::2]


def unpack4(packed: torch.Tensor) -> torch.Tensor:
    """pack4's inverse."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).flatten(-2)


def dequantize(codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """quantize's inverse, to float32 (each value within half a step of the original)."""
    return low.float() + codes.float() * step.float()


def stored(feats: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Features as a model file gives them back: a bank is chosen with the values it will ship with."""
    return dequantize(*quantize(feats, bits))


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model file's state dict -> (the model's weights, the bank's tensors)."""
    return ({k: v for k, v in state.items() if not k.startswith(PREFIX)},
            {k: v for k, v in state.items() if k.startswith(PREFIX)})


def lse_offsets(scores: torch.Tensor, dim: int, beta: float, weight: float) -> torch.Tensor:
    """The offsets of S' from scores against the bank (bank along `dim`): w/β · log Σ_b exp(β·S)."""
    return weight * torch.logsumexp(beta * scores, dim=dim) / beta


@torch.no_grad()
def photo_bank_scores(model: torch.nn.Module, bank: QueryBank, v: torch.Tensor, region_mask: torch.Tensor,
                      chunk: int = 64) -> torch.Tensor:
    """(N, K) S(p, b) of photos given as region vectors v (N, R, h) with region_mask (N, R) against the
    bank's K sentences, over their real words only (no padding)."""
    part, sent, n_sent, globs = bank.split_words(model, v.device, shared_width(model))
    out = [score_words(v[a:a + chunk], region_mask[a:a + chunk], part, sent, n_sent, shared_width(model), globs)
           for a in range(0, len(v), chunk)]
    return torch.cat(out) if out else torch.zeros(0, n_sent, device=v.device)


@torch.no_grad()
def sentence_bank_scores(model: torch.nn.Module, bank: QueryBank, s: torch.Tensor, word_mask: torch.Tensor,
                         chunk: int = 512) -> torch.Tensor:
    """(P, M) S(b, s) of the bank's P photos against sentences given as word vectors s (M, T, h) with
    word_mask (M, T)."""
    vb, mask = bank.regions(model, s.device)
    out = []
    for a in range(0, len(s), chunk):
        words, sent = flat_words(s[a:a + chunk], word_mask[a:a + chunk])
        out.append(score_words(vb, mask, words, sent, len(s[a:a + chunk]), shared_width(model)))
    return torch.cat(out, dim=1) if out else torch.zeros(len(vb), 0, device=s.device)


def photo_offsets(model: torch.nn.Module, bank: QueryBank, v: torch.Tensor, region_mask: torch.Tensor,
                  chunk: int = 64) -> torch.Tensor:
    """(N,) offsets of photos given as region vectors v (N, R, h) with region_mask (N, R): what
    S'(p, s) subtracts from every score of photo p."""
    return lse_offsets(photo_bank_scores(model, bank, v, region_mask, chunk), 1, bank.beta, bank.weight)


def sentence_offsets(model: torch.nn.Module, bank: QueryBank, s: torch.Tensor, word_mask: torch.Tensor,
                     chunk: int = 512) -> torch.Tensor:
    """(M,) offsets of sentences given as word vectors s (M, T, h) with word_mask (M, T)."""
    out = [lse_offsets(sentence_bank_scores(model, bank, s[a:a + chunk], word_mask[a:a + chunk], chunk), 0, bank.beta,
                       bank.weight) for a in range(0, len(s), chunk)]  # chunk by chunk: (P, M) may not fit
    return torch.cat(out) if out else torch.zeros(0, device=s.device)
