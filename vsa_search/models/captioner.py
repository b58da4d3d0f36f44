"""The caption generator (paper Sec. 3.2): a multimodal RNN that reads the image once, as a bias
at the first step, and then predicts a sentence one word at a time.

    b_v = W_hi · CNN(I)
    h_t = f(W_hx x_t + W_hh h_{t-1} + b_h + 1(t=1) ⊙ b_v)        f = ReLU, x_1 = START
    y_t = softmax(W_oh h_t + b_o)                                  generation stops at END

`cell="lstm"` swaps the recurrence for an LSTM that takes the image the same way (a bias on its
gates at the first step only), so the two can be measured against each other; `cell="attend"` is an
LSTM that attends over the photo's regions at every step (models/attention.py).

A generator's input is (B, D), one vector per photo, or (B, R, D), a photo's region vectors with the
full frame first (photo_input): the full-frame generators read row 0 of it, so every kind decodes the
same input, alone or in an ensemble."""

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
from .attention import AttendCaptioner
from .querybank import dequantize, quantize

CELLS = ("rnn", "lstm", "attend")
STATE_TENSORS = {"rnn": 2, "lstm": 3, "attend": 4}  # the length of each cell's decoding state

# A decoding state is a tuple of tensors that all lead with the batch (or beam) dimension, so that
# beam search can reorder any cell's state with one index_select per tensor.
State = tuple[torch.Tensor, ...]


class Captioner(nn.Module):
    def __init__(self, cfg: CaptionConfig, vocab_size: int):
        super().__init__()
        if cfg.cell not in ("rnn", "lstm"):
            raise ModelError(f"unknown caption cell {cfg.cell!r}; choose one of {', '.join(CELLS)}")
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
        """(B, D) full-image CNN features (or (B, R, D) region vectors, row 0 the full image) -> the state
        before the first word."""
        if feats.dim() == 3:
            feats = feats[:, 0]
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


def make_captioner(cfg: CaptionConfig, vocab_size: int) -> nn.Module:
    """The generator `cfg` describes (untrained): an ensemble, an attention generator or a Captioner."""
    if cfg.members > 1:
        return CaptionEnsemble(cfg, vocab_size)
    if cfg.cell == "attend":
        return AttendCaptioner(cfg, vocab_size)
    return Captioner(cfg, vocab_size)


class CaptionEnsemble(nn.Module):
    """Generators of one shape and vocabulary decoding together: each step's word distribution is the
    mean of the members' (log of the mean of their probabilities). It decodes (init_state, step) like a
    Captioner, so beam search, constrained beams and re-ranking take it as they are; it is not trained
    as one (`vsa train caption-ensemble` puts trained generators together). Members may differ in cell
    (cfg.member_cells): an attention generator and a full-frame one share the input (photo_input)."""

    def __init__(self, cfg: CaptionConfig, vocab_size: int):
        super().__init__()
        if cfg.members < 2:
            raise ModelError(f"an ensemble needs at least 2 members (got {cfg.members})")
        self.cfg = cfg
        self.vocab_size = vocab_size
        cells = cfg.member_cells or (cfg.cell,) * cfg.members
        if len(cells) != cfg.members:
            raise ModelError(f"an ensemble of {cfg.members} members with {len(cells)} member cells")
        self.members = nn.ModuleList([make_captioner(dataclasses.replace(cfg, members=1, cell=c, member_cells=()),
                                                     vocab_size) for c in cells])
        self._sizes = [STATE_TENSORS[c] for c in cells]  # each member's part of the flat state

    def init_state(self, feats: torch.Tensor) -> State:
        # One flat tuple (beam search reorders it tensor by tensor); members' parts may differ in length.
        return tuple(x for m in self.members for x in m.init_state(feats))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logps, new, at = [], [], 0
        for m, n in zip(self.members, self._sizes, strict=True):
            logits, st = m.step(tokens, tuple(state[at:at + n]))
            at += n
            logps.append(F.log_softmax(logits.float(), dim=-1))
            new += list(st)
        return torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps)), tuple(new)

    def loss(self, *args, **kwargs) -> torch.Tensor:
        raise ModelError("a caption ensemble is not trained as one: train its members, then "
                         "`vsa train caption-ensemble`")


def ensemble_captioners(members: list[LoadedCaptioner]) -> CaptionEnsemble:
    """One ensemble of trained generators; all must share the shape, vocabulary and features (an attention
    generator may join full-frame LSTMs of its hidden and word sizes)."""
    if len(members) < 2:
        raise UsageError("an ensemble needs at least 2 caption models")
    cells = tuple(m.config.cell for m in members)
    # The ensemble's config is an attending member's when there is one (its attention sizes are the ones used).
    first = next((m for m in members if m.config.cell == "attend"), members[0])
    if len(set(cells)) > 1 and "rnn" in cells:
        raise UsageError("an ensemble mixes LSTM and attention generators, not the paper's RNN")
    for m in members:
        if isinstance(m.model, CaptionEnsemble):
            raise UsageError(f"{m.path}: already an ensemble; give its members")
        if m.vocab != first.vocab:
            raise UsageError(f"{m.path}: its vocabulary differs from {first.path}'s")
        shape = ("hidden", "word_dim", "feature_dim") + (("att_dim", "regions") if m.config.cell == "attend" else ())
        if any(getattr(m.config, k) != getattr(first.config, k) for k in shape):
            raise UsageError(f"{m.path}: a generator of another shape than {first.path}")
        if m.region_config != first.region_config:
            raise UsageError(f"{m.path}: made for other features than {first.path}")
    ens = CaptionEnsemble(dataclasses.replace(first.config, members=len(members),
                                              member_cells=cells if len(set(cells)) > 1 else ()), len(first.vocab))
    for slot, m in zip(ens.members, members):
        slot.load_state_dict(m.model.state_dict())
    return ens.eval()


def full_image(features) -> torch.Tensor:
    """The captioner's input: region 0 (the whole photo) of a RegionFeatures, as a (D,) tensor."""
    return torch.as_tensor(features.features[0], dtype=torch.float32)


def photo_input(features, cfg: CaptionConfig) -> torch.Tensor:
    """A photo's input to the generator `cfg`: its full-image vector (D,) (full_image), or for one that
    attends its first cfg.regions region vectors (R, D), full frame first, padded with zero rows."""
    if not cfg.attends:
        return full_image(features)
    rows = torch.as_tensor(features.features[:cfg.regions], dtype=torch.float32)
    return F.pad(rows, (0, 0, 0, cfg.regions - len(rows)))


# --------------------------------------------------------------------------- load / save


# The prior photos' inputs sit in the state dict under this prefix, in 8 bits (querybank.quantize).
PRIOR = "prior."


@dataclass
class LoadedCaptioner:
    model: nn.Module  # Captioner, AttendCaptioner or CaptionEnsemble (make_captioner)
    vocab: Vocab
    config: CaptionConfig
    region_config: RegionConfig
    path: Path
    metrics: dict
    # Training photos' inputs (B, R, D) over which a sentence's mean probability is taken, when the file has
    # them (`vsa train generator-prior`; evaluation/generative.py)
    prior: torch.Tensor | None = None

    def require_prior(self) -> torch.Tensor:
        """The prior photos' inputs, which re-ranking retrieval needs; a file without them is a usage error."""
        if self.prior is None:
            raise UsageError(f"{self.path}: a generator without prior photos cannot re-rank; add them with "
                             "`vsa train generator-prior`")
        return self.prior


def save_caption(model: Captioner, vocab: Vocab, region_cfg: RegionConfig, path: str | Path,
                 metrics: dict | None = None, train_state: dict | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None, half: bool = False,
                 prior: torch.Tensor | None = None) -> Path:
    """Write a kind="caption" checkpoint (see checkpoint.save_model: `state_dict`, `half`), with the prior
    photos' inputs when given."""
    if prior is not None:
        codes, low, step = quantize(prior)
        state_dict = {**(state_dict if state_dict is not None else model.state_dict()),
                      PRIOR + "codes": codes, PRIOR + "low": low, PRIOR + "step": step}
    return checkpoint.save_model("caption", model, vocab, region_cfg, path, metrics, train_state, state_dict, half)


def load_caption(path: str | Path, device: str | torch.device = "cpu") -> LoadedCaptioner:
    ck = checkpoint.load(path, kind="caption")
    cfg = from_dict(CaptionConfig, ck.config)
    vocab = Vocab.from_dict(ck.vocab)
    if cfg.cell not in CELLS or any(c not in CELLS for c in cfg.member_cells):
        raise ModelError(f"{path}: a caption model of a kind this version does not know ({cfg.cell!r})")
    model = make_captioner(cfg, len(vocab))
    prior_state = {k[len(PRIOR):]: ck.state_dict.pop(k) for k in [k for k in ck.state_dict if k.startswith(PRIOR)]}
    checkpoint.load_weights(model, ck, path)
    model.to(device).eval()
    try:
        prior = dequantize(prior_state["codes"], prior_state["low"], prior_state["step"]).to(device) \
            if prior_state else None
    except KeyError:
        raise ModelError(f"{path}: its prior photos are incomplete") from None
    return LoadedCaptioner(model, vocab, cfg, from_dict(RegionConfig, ck.region_config), Path(path), ck.metrics,
                           prior)
