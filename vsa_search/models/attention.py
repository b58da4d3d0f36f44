"""The attention caption generator (`cell="attend"`; Xu et al. 2015, "Show, Attend and Tell", soft
attention) over a photo's region vectors: the full frame and its regions (row 0 and the rest of a
RegionFeatures), rather than the full frame alone as a bias at the first step.

    p_i = W_p v_i                                          regions, projected (missing ones masked)
    h_0, c_0 = tanh(W_init mean_i p_i)                     the initial state from the mean region
    α_t = softmax_i(w_a · tanh(p_i + W_a h_{t-1}))         where to look before the t-th word
    z_t = σ(w_β · h_{t-1}) Σ_i α_ti p_i                    the attended context, gated by β
    h_t, c_t = LSTM(W_hx x_t + W_z z_t + W_hh h_{t-1})     the context enters with the word
    y_t = softmax(W_oh h_t + b_o)

Its input is (B, R, D) region vectors padded with all-zero rows (a CNN feature of a real region is
never all zero), or (B, D) one vector per photo (a lone region, as `vsa caption --regions` gives). The
decoding state carries the projected regions and their mask, so beam search reorders them with the
rest (models/beam.py) and an ensemble (CaptionEnsemble) can mix it with full-frame generators. The
embeddings, W_hx, W_hh and the output layer have the names and shapes of Captioner's LSTM, so
`--init caption` starts from a trained full-frame generator (the attention parts start at zero: the
first steps behave like that generator without its image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import CaptionConfig
from ..data.vocab import PAD

State = tuple[torch.Tensor, ...]

# Parameters a full-frame LSTM generator has no counterpart for (--init leaves them as built here).
NEW_PARAMS = ("w_p.", "w_init.", "w_a.", "att_v.", "w_beta.", "w_z.")


def as_regions(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R, D) padded region vectors or (B, D) -> (B, R, D) float32 and the mask (B, R) of real rows."""
    feats = feats.float()
    if feats.dim() == 2:
        feats = feats[:, None]
    mask = feats.abs().sum(-1) > 0
    mask[:, 0] = True  # a photo always has row 0 (the full frame), even an all-zero one
    return feats, mask


class AttendCaptioner(nn.Module):
    def __init__(self, cfg: CaptionConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        H, A = cfg.hidden, cfg.att_dim
        self.embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=PAD)
        self.w_hx = nn.Linear(cfg.word_dim, 4 * H)  # as Captioner's
        self.w_hh = nn.Linear(H, 4 * H, bias=False)  # as Captioner's
        self.w_oh = nn.Linear(H, vocab_size)  # as Captioner's
        self.w_p = nn.Linear(cfg.feature_dim, A)  # region projection
        self.w_init = nn.Linear(A, 2 * H)  # mean region -> h_0, c_0
        self.w_a = nn.Linear(H, A, bias=False)  # the state's part of the attention energy
        self.att_v = nn.Linear(A, 1, bias=False)  # w_a
        self.w_beta = nn.Linear(H, 1)  # the gate β
        self.w_z = nn.Linear(A, 4 * H, bias=False)  # context -> LSTM gates
        self.drop = nn.Dropout(cfg.dropout)
        # Zero context and zero initial state at the start: a generator given to --init keeps its
        # behaviour (less its image) and the attention grows from there; from scratch it trains as well.
        for lin in (self.w_init, self.w_z):
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------ one step (decoding)

    def init_state(self, feats: torch.Tensor) -> State:
        """(B, R, D) padded region vectors, or (B, D) -> (h, c, projected regions (B, R, A), mask (B, R))."""
        v, mask = as_regions(feats)
        p = self.w_p(self.drop(v))  # (B, R, A)
        m = mask.unsqueeze(-1).to(p.dtype)
        mean = (p * m).sum(1) / m.sum(1)  # (B, A) the mean of the real regions
        h, c = torch.tanh(self.w_init(mean)).chunk(2, dim=-1)
        return (h, c, p, mask)

    def attend(self, h: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated context z (N, A) and the weights α (N, R) given the previous state h (N, H)."""
        e = self.att_v(torch.tanh(p + self.w_a(h)[:, None])).squeeze(-1)  # (N, R)
        alpha = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)
        z = torch.bmm(alpha[:, None], p).squeeze(1)  # (N, A)
        return torch.sigmoid(self.w_beta(h)) * z, alpha

    def _cell(self, gx: torch.Tensor, state: State) -> State:
        h, c, p, mask = state
        z, _ = self.attend(h, p, mask)
        g = gx + self.w_z(self.drop(z)) + self.w_hh(h)  # (N, 4H)
        i, f, o, u = g.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h, c, p, mask)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (N,) the previous word -> logits (N, V) for the next word, and the new state."""
        state = self._cell(self.w_hx(self.drop(self.embed(tokens))), state)
        return self.w_oh(self.drop(state[0])), state

    # ------------------------------------------------------------------ whole sentences (training)

    def hidden_states(self, feats: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. feats (B, R, D), inputs (B, T) = START w_1 .. w_n (PAD after) -> h (B, T, H)."""
        state = self.init_state(feats)
        gx = self.w_hx(self.drop(self.embed(inputs)))  # (B, T, 4H)
        hs = []
        for t in range(inputs.shape[1]):
            state = self._cell(gx[:, t], state)
            hs.append(state[0])
        return torch.stack(hs, dim=1)

    def forward(self, feats: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.w_oh(self.drop(self.hidden_states(feats, inputs)))

    def loss(self, feats: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy per predicted word (the output layer only where there is a word to predict)."""
        keep = targets != PAD
        h = self.hidden_states(feats, inputs)[keep]
        return F.cross_entropy(self.w_oh(self.drop(h)), targets[keep], reduction=reduction)
