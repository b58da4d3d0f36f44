"""The caption generator (paper Sec. 3.2): a multimodal RNN that reads the image once, as a bias
at the first step, and then predicts a sentence one word at a time.

    b_v = W_hi · CNN(I)
    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h + 1(t=1) ⊙ b_v)        f = ReLU, x_1 = START
    y_t = softmax(W_oh h_t + b_o)                                  generation stops at END

`cell="lstm"` swaps the recurrence for an LSTM that takes the image the same way (a bias on its
gates at the first step only), so the two can be measured against each other."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import CaptionConfig, RegionConfig, from_dict
from ..core.errors import ModelError, UsageError
from ..data.vocab import PAD, Vocab
from . import checkpoint

# A decoding state is a tuple of tensors that all lead with the batch (or beam) dimension, so that
# beam search can reorder any cell's state with one index_select per tensor.
State = tuple[torch.Tensor, ...]


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionConfig, vocab_size: int):
        super().__init__()
        if cfg.cell not in ("rnn", "lstm"):
            raise ModelError(f"unknown caption cell {cfg.cell!r}; choose rnn or lstm")
        self.cfg = cfg
        self.vocab_size = vocab_size
        gates = cfg.hidden * (4 if cfg.cell == "lstm" else 1)
        self.embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=PAD)  # x_t = W_w 1_t
        self.w_hi = nn.Linear(cfg.feature_dim, gates)  # image -> first-step bias b_v
        self.w_hx = nn.Linear(cfg.word_dim, gates)  # W_hx, with b_h as its bias
        self.w_hh = nn.Linear(cfg.hidden, gates, bias=False)  # W_hh
        self.w_oh = nn.Linear(cfg.hidden, vocab_size)  # W_oh, b_o
        self.drop = nn.Dropout(cfg.dropout)  # on non-recurrent connections only, as in the paper

    # ------------------------------------------------------------------ one step (decoding)

    def init_state(self, feats: torch.Tensor) -> State:
        """(B, D) full-image CNN features -> the state before the first word."""
        b_v = self.w_hi(self.drop(feats))  # (B, G)
        h = feats.new_zeros(feats.shape[0], self.cfg.hidden)  # (B, h)
        if self.cfg.cell == "lstm":
            return (h, torch.zeros_like(h), b_v)
        return (h, b_v)

    def _cell(self, gx: torch.Tensor, state: State) -> State:
        """One recurrence given the input projection gx (N, G); b_v is spent after this step."""
        if self.cfg.cell == "lstm":
            h, c, b_v = state
            g = gx + self.w_hh(h) + b_v  # (N, 4h)
            i, f, o, u = g.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
            h = torch.sigmoid(o) * torch.tanh(c)
            return (h, c, torch.zeros_like(b_v))
        h, b_v = state
        h = F.relu(gx + self.w_hh(h) + b_v)  # (N, h)
        return (h, torch.zeros_like(b_v))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (N,) the previous word -> logits (N, V) for the next word, and the new state."""
        gx = self.w_hx(self.drop(self.embed(tokens)))  # (N, G)
        state = self._cell(gx, state)
        return self.w_oh(self.drop(state[0])), state

    # ------------------------------------------------------------------ whole sentences (training)

    def hidden_states(self, feats: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. feats (B, D), inputs (B, T) = START w_1 .. w_n (PAD after) -> h (B, T, h)."""
        state = self.init_state(feats)
        gx = self.w_hx(self.drop(self.embed(inputs)))  # (B, T, G): all input projections at once
        hs = []
        for t in range(inputs.shape[1]):
            state = self._cell(gx[:, t], state)
            hs.append(state[0])
        return torch.stack(hs, dim=1)  # (B, T, h)

    def forward(self, feats: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """logits (B, T, V) for w_1 .. w_n END."""
        return self.w_oh(self.drop(self.hidden_states(feats, inputs)))

    def loss(self, feats: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy per predicted word. The output layer (the costly part: V is thousands)
        runs only where there is a word to predict, not on the PAD tail of short sentences."""
        keep = targets != PAD  # (B, T)
        h = self.hidden_states(feats, inputs)[keep]  # (N, h) N = words + ENDs in the batch
        return F.cross_entropy(self.w_oh(self.drop(h)), targets[keep], reduction=reduction)


class CaptionEnsemble(nn.Module):
    """Generators of one shape and vocabulary decoding together: each step's word distribution is the
    mean of the members' (log of the mean of their probabilities). It decodes (init_state, step) like a
    Captioner, so beam search, constrained beams and re-ranking take it as they are; it is not trained
    as one (`vsa train caption-ensemble` puts trained generators together)."""

    def __init__(self, cfg: CaptionConfig, vocab_size: int):
        super().__init__()
        if cfg.members < 2:
            raise ModelError(f"an ensemble needs at least 2 members (got {cfg.members})")
        self.cfg = cfg
        self.vocab_size = vocab_size
        one = dataclasses.replace(cfg, members=1)
        self.members = nn.ModuleList([Captioner(one, vocab_size) for _ in range(cfg.members)])

    def init_state(self, feats: torch.Tensor) -> State:
        # One flat tuple (beam search reorders it tensor by tensor); each member's part has the same length.
        return tuple(x for m in self.members for x in m.init_state(feats))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        n = len(state) // len(self.members)
        logps, new = [], []
        for j, m in enumerate(self.members):
            logits, st = m.step(tokens, tuple(state[j * n:(j + 1) * n]))
            logps.append(F.log_softmax(logits.float(), dim=-1))
            new += list(st)
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps)), tuple(new)

    def loss(self, *args, **kwargs) -> torch.Tensor:
        raise ModelError("a caption ensemble is not trained as one: train its members, then "
                         "`vsa train caption-ensemble`")


def ensemble_captioners(members: list[LoadedCaptioner]) -> CaptionEnsemble:
    """One ensemble of trained generators; all must share the shape, vocabulary and features."""
    if len(members) < 2:
        raise UsageError("an ensemble needs at least 2 caption models")
    first = members[0]
    shape = ("cell", "hidden", "word_dim", "feature_dim")
    for m in members:
        if isinstance(m.model, CaptionEnsemble):
            raise UsageError(f"{m.path}: already an ensemble; give its members")
        if m.vocab != first.vocab:
            raise UsageError(f"{m.path}: its vocabulary differs from {first.path}'s")
        if any(getattr(m.config, k) != getattr(first.config, k) for k in shape):
            raise UsageError(f"{m.path}: a generator of another shape than {first.path}")
        if m.region_config != first.region_config:
            raise UsageError(f"{m.path}: made for other features than {first.path}")
    ens = CaptionEnsemble(dataclasses.replace(first.config, members=len(members)), len(first.vocab))
    for slot, m in zip(ens.members, members):
        slot.load_state_dict(m.model.state_dict())
    return ens.eval()


def full_image(features) -> torch.Tensor:
    """The captioner's input: region 0 (the whole photo) of a RegionFeatures, as a (D,) tensor."""
    return torch.as_tensor(features.features[0], dtype=torch.float32)


# --------------------------------------------------------------------------- load / save


@dataclass
class LoadedCaptioner:
    model: Captioner
    vocab: Vocab
    config: CaptionConfig
    region_config: RegionConfig
    path: Path
    metrics: dict


def save_caption(model: Captioner, vocab: Vocab, region_cfg: RegionConfig, path: str | Path,
                 metrics: dict | None = None, train_state: dict | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None, half: bool = False) -> Path:
    """Write a kind="caption" checkpoint (see checkpoint.save_model: `state_dict`, `half`)."""
    return checkpoint.save_model("caption", model, vocab, region_cfg, path, metrics, train_state, state_dict, half)


def load_caption(path: str | Path, device: str | torch.device = "cpu") -> LoadedCaptioner:
    ck = checkpoint.load(path, kind="caption")
    cfg = from_dict(CaptionConfig, ck.config)
    vocab = Vocab.from_dict(ck.vocab)
    model = CaptionEnsemble(cfg, len(vocab)) if cfg.members > 1 else Captioner(cfg, len(vocab))
    checkpoint.load_weights(model, ck, path)
    model.to(device).eval()
    return LoadedCaptioner(model, vocab, cfg, from_dict(RegionConfig, ck.region_config), Path(path), ck.metrics)
