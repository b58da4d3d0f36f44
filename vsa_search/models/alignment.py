"""The alignment model (paper Sec. 3.1): region vectors v_i and word vectors s_t, scored by
S_kl = Σ_t max_i v_i · s_t (score.py) for a whole batch of images x sentences; its loss and files."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import EmbedConfig, RegionConfig, check_carried_top, from_dict
from ..core.errors import ModelError, UsageError
from ..data.vocab import Vocab
from . import checkpoint
from .encoders import ImageEncoder, SentenceEncoder
from .querybank import QueryBank, split_state
from .score import score, word_mask


class AlignModel(nn.Module):
    """arch "brnn": the paper's model. arch "hybrid": the same plus a global term, carried in extra
    dimensions so that score() is unchanged: v_i = [a_i ; u] (u, the full-image vector, the same
    for every region) and s_t = [b_t ; g_t] (Σ_t g_t the sentence's mean-word vector), hence
    Σ_t max_i v_i·s_t = Σ_t max_i a_i·b_t + u·Σ_t g_t: alignment score + global score."""

    def __init__(self, cfg: EmbedConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg.feature_dim, cfg.hidden, cfg.dropout, cfg.feat_norm, cfg.image_mlp)
        self.sentence = SentenceEncoder(vocab_size, cfg.word_dim, cfg.hidden, cfg.dropout,
                                        final_relu=cfg.word_relu, cell=cfg.rnn)
        self.glob = GlobalModel(cfg, vocab_size) if cfg.arch == "hybrid" else None
        # An ensemble's further global models (ensemble_align), each in its own extra h dimensions:
        # their cosines add to the score exactly, as the first one's does.
        n_extra = cfg.global_members - 1 if self.glob is not None else 0
        self.glob_extra = nn.ModuleList([GlobalModel(cfg, vocab_size) for _ in range(n_extra)])
        self.out_dim = cfg.hidden * (1 + (1 + n_extra if self.glob is not None else 0))  # size of v_i and s_t

    def encode_regions(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, R, D) CNN features -> (B, R, h) region vectors v_i ((B, R, 2h) for hybrid);
        (B, 1, ·) when the config uses the full image alone."""
        if self.cfg.regions == "full":
            feats = feats[:, :1]
        v = self.image(feats)
        v = F.normalize(v, dim=-1) if self.cfg.normalize else v
        if self.glob is not None:
            us = [g.encode_regions(feats) for g in (self.glob, *self.glob_extra)]  # each (B, 1, h)
            v = torch.cat([v, *(u.expand_as(v) for u in us)], dim=-1)
        return v

    def encode_words(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) word ids, (B,) lengths -> (B, T, h) word vectors s_t (zero past the length;
        (B, T, 2h) for hybrid)."""
        s = self.sentence(ids, lengths)
        if self.cfg.normalize:
            s = F.normalize(s, dim=-1)
        if self.cfg.pool == "mean":
            # Scaling each s_t by 1/length turns score()'s sum over words into a mean, so long
            # sentences do not outscore short ones merely by having more words.
            s = s / lengths.clamp(min=1).to(s.dtype)[:, None, None]
        if self.glob is not None:
            s = torch.cat([s, *(g.encode_words(ids, lengths) for g in (self.glob, *self.glob_extra))], dim=-1)
        return s

    def init_glove(self, vocab: Vocab) -> int:
        """GloVe into every word table; returns how many words GloVe knew."""
        found = self.sentence.init_glove(vocab)
        for g in (self.glob, *self.glob_extra) if self.glob is not None else ():
            g.init_glove(vocab)
        return found

    def forward(self, feats: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every image against every sentence: (B_img, B_sent)."""
        v = self.encode_regions(feats)
        s = self.encode_words(ids, lengths)
        return score(v, region_mask[:, : v.shape[1]], s, word_mask(lengths, ids.shape[1]))

    def member_scores(self, feats: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor,
                      lengths: torch.Tensor) -> list[torch.Tensor]:
        """forward()'s scores split by ensemble member, which sum to it: the hybrid (its alignment
        and global parts; the global dimensions are the same for every region, so they never change
        which region a word's max picks) and each extra global model in its own h dimensions."""
        v = self.encode_regions(feats)
        s = self.encode_words(ids, lengths)
        h, width = self.cfg.hidden, v.shape[-1]
        edges = [0, *range(width - len(self.glob_extra) * h, width + 1, h)]  # the hybrid's, then one h each
        rmask, wmask = region_mask[:, : v.shape[1]], word_mask(lengths, ids.shape[1])
        return [score(v[..., a:b], rmask, s[..., a:b], wmask) for a, b in zip(edges, edges[1:])]


class GlobalModel(nn.Module):
    """The global baseline: the full-image feature (region 0) against the mean of the sentence's
    word vectors. It keeps AlignModel's interface: one region per image, and word vectors scaled
    so that score()'s sum over words is exactly the (cosine or dot) image-sentence similarity."""

    def __init__(self, cfg: EmbedConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg.feature_dim, cfg.hidden, cfg.dropout, cfg.feat_norm, cfg.image_mlp)
        self.embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.word_dim, cfg.hidden)
        self.out_dim = cfg.hidden

    def encode_regions(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, R, D) -> (B, 1, h): only the full image (region 0) is used."""
        v = self.image(feats[:, :1])
        return F.normalize(v, dim=-1) if self.cfg.normalize else v

    def encode_words(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T), (B,) -> (B, T, h) with Σ_t s_t = W·mean(x) + b (unit length when normalize)."""
        mask = word_mask(lengths, ids.shape[1]).unsqueeze(-1)
        s = self.proj(self.drop(self.embed(ids))) * mask  # (B, T, h)
        total = s.sum(1, keepdim=True)  # (B, 1, h)
        if self.cfg.normalize:
            return s / total.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        return s / lengths.clamp(min=1).to(s.dtype)[:, None, None]

    def forward(self, feats: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        v = self.encode_regions(feats)
        s = self.encode_words(ids, lengths)
        return score(v, region_mask[:, :1], s, word_mask(lengths, ids.shape[1]))

    def init_glove(self, vocab: Vocab) -> int:
        return SentenceEncoder.init_glove(self, vocab)  # type: ignore[arg-type]  # it uses only .embed


ARCHS = ("brnn", "global", "hybrid")


def build_model(cfg: EmbedConfig, vocab_size: int) -> AlignModel | GlobalModel:
    """The model a config describes (`arch`), untrained."""
    if cfg.arch not in ARCHS:
        raise UsageError(f"unknown model arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    if cfg.pool not in ("sum", "mean"):
        raise UsageError(f"unknown pool {cfg.pool!r}; choose sum or mean")
    if cfg.regions not in ("all", "full"):
        raise UsageError(f"unknown regions {cfg.regions!r}; choose all or full")
    if cfg.ensemble_loss not in ("whole", "members"):
        raise UsageError(f"unknown ensemble loss {cfg.ensemble_loss!r}; choose whole or members")
    if cfg.rnn not in ("relu", "gru"):
        raise UsageError(f"unknown rnn {cfg.rnn!r}; choose relu or gru")
    return (GlobalModel if cfg.arch == "global" else AlignModel)(cfg, vocab_size)


def trains_members(cfg: EmbedConfig) -> bool:
    """Whether the config asks for each ensemble member's own loss, and has members to split."""
    return cfg.ensemble_loss == "members" and cfg.arch == "hybrid" and cfg.global_members > 1


def model_loss(model: nn.Module, feats: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor,
               lengths: torch.Tensor, margin: float, hardest: bool = False) -> torch.Tensor:
    """A batch's ranking loss under the model's config: of its score, or, for an ensemble trained with
    ensemble_loss "members", the sum of each member's own (member_scores)."""
    if trains_members(model.cfg):
        parts = model.member_scores(feats, region_mask, ids, lengths)
        return sum(ranking_loss(p.float(), margin, hardest) for p in parts)  # type: ignore[return-value]
    return ranking_loss(model(feats, region_mask, ids, lengths).float(), margin, hardest)


def ranking_loss(scores: torch.Tensor, margin: float = 1.0, hardest: bool = False) -> torch.Tensor:
    """Bidirectional max-margin ranking loss over a batch whose diagonal holds the true pairs
    (paper Eq. 3):  Σ_k [ Σ_l max(0, S_kl - S_kk + m) + Σ_l max(0, S_lk - S_kk + m) ].
    hardest=True keeps only the worst negative per row/column (VSE++)."""
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    return hinge_loss(scores, eye, scores, eye, margin, hardest)


def hinge_loss(rows: torch.Tensor, rows_true: torch.Tensor, cols: torch.Tensor, cols_true: torch.Tensor,
               margin: float, hardest: bool = False) -> torch.Tensor:
    """The two sums of the ranking loss. rows (A, B): each row is an image against sentences, its true
    pair marked once in rows_true; cols (C, D): each column is a sentence against images, its true
    pair marked once in cols_true. Costs max(0, m + S_wrong - S_true), summed (or only each row's and
    column's worst, hardest=True). ranking_loss passes one (B, B) matrix as both; the distributed
    loss passes a rank's rows and columns of the global batch's matrix."""
    cost_s = (margin + rows - rows[rows_true][:, None]).clamp(min=0).masked_fill(rows_true, 0)  # vs wrong sentences
    cost_i = (margin + cols - cols.T[cols_true.T][None, :]).clamp(min=0).masked_fill(cols_true, 0)  # vs wrong images
    if hardest:
        return cost_s.max(dim=1).values.sum() + cost_i.max(dim=0).values.sum()
    return cost_s.sum() + cost_i.sum()


# --------------------------------------------------------------------------- load / save


@dataclass
class LoadedAlign:
    """Everything needed to use an alignment model (CLIP-style `load()` result)."""

    model: AlignModel | GlobalModel  # GlobalModel only for a baseline file (config.arch == "global")
    vocab: Vocab
    config: EmbedConfig
    region_config: RegionConfig
    path: Path
    metrics: dict
    fingerprint: str  # identifies the weights: an index built with one model refuses another
    querybank: QueryBank | None = None  # score normalisation (querybank.py), when the file has one
    top: dict[str, np.ndarray] | None = None  # the fine-tuned CNN top region_config.top names (timm names, float16)


TOP_PREFIX = "cnn."  # a fine-tuned CNN top's weights in a model file's state dict


def top_state(top: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
    """A CNN top's weights as model-file entries (float16, whatever the file's other weights are)."""
    return {TOP_PREFIX + k: torch.from_numpy(np.asarray(v, np.float16).copy()) for k, v in (top or {}).items()}


def split_top(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """A model file's state dict -> (everything else, the CNN top's weights by timm name)."""
    return ({k: v for k, v in state.items() if not k.startswith(TOP_PREFIX)},
            {k[len(TOP_PREFIX):]: v.cpu().half().numpy() for k, v in state.items() if k.startswith(TOP_PREFIX)})


def save_align(model: AlignModel | GlobalModel, vocab: Vocab, region_cfg: RegionConfig, path: str | Path,
               metrics: dict | None = None, train_state: dict | None = None,
               state_dict: dict[str, torch.Tensor] | None = None, half: bool = False,
               querybank: QueryBank | None = None, top: dict[str, np.ndarray] | None = None) -> Path:
    """Write a kind="align" checkpoint (see checkpoint.save_model: `state_dict`, `half`), with its
    querybank when given, and the fine-tuned CNN top its features come from (region_cfg.top)."""
    check_carried_top(region_cfg, top, path)
    if querybank is not None:
        state_dict = {**(state_dict if state_dict is not None else model.state_dict()), **querybank.to_state()}
        metrics = {**(metrics or {}), "querybank": querybank.header()}
    if top:
        state_dict = {**(state_dict if state_dict is not None else model.state_dict()), **top_state(top)}
    return checkpoint.save_model("align", model, vocab, region_cfg, path, metrics, train_state, state_dict, half)


def load_align(path: str | Path, device: str | torch.device = "cpu") -> LoadedAlign:
    ck = checkpoint.load(path, kind="align")
    cfg = from_dict(EmbedConfig, ck.config)
    vocab = Vocab.from_dict(ck.vocab)
    model = build_model(cfg, len(vocab))
    weights, bank_state = split_state(ck.state_dict)
    weights, top = split_top(weights)
    region_cfg = from_dict(RegionConfig, ck.region_config)
    check_carried_top(region_cfg, top, path)
    checkpoint.load_weights(model, dataclasses.replace(ck, state_dict=weights), path)
    model.to(device).eval()
    bank = None
    if bank_state:
        try:
            bank = QueryBank.from_state(bank_state, ck.metrics["querybank"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: its querybank is incomplete") from None
    return LoadedAlign(model, vocab, cfg, region_cfg, Path(path), ck.metrics, weights_fingerprint(ck.state_dict),
                       bank, top or None)


def ensemble_align(base: LoadedAlign, members: list[LoadedAlign]) -> AlignModel:
    """A hybrid model whose score is the base's plus the cosine score of each global baseline in
    `members` (trained separately, e.g. other seeds): S = S_base + Σ_j S_j, exactly, through the
    same score() (each member's vectors sit in their own extra dimensions). All must share the
    vocabulary, the feature extractor and the global part's shape."""
    if base.config.arch != "hybrid":
        raise ModelError(f"{base.path}: an ensemble is built on a hybrid model (this one is {base.config.arch})")
    same = ("hidden", "word_dim", "normalize", "feature_dim", "feat_norm", "image_mlp")
    for m in members:
        if m.config.arch != "global":
            raise ModelError(f"{m.path}: ensemble members must be global baselines (this one is {m.config.arch})")
        if m.vocab.itos != base.vocab.itos or m.region_config != base.region_config:
            raise ModelError(f"{m.path}: another vocabulary or feature extractor than {base.path}")
        if any(getattr(m.config, k) != getattr(base.config, k) for k in same):
            raise ModelError(f"{m.path}: its global model differs in shape from {base.path}'s ({', '.join(same)})")
    cfg = dataclasses.replace(base.config, global_members=base.config.global_members + len(members))
    model = AlignModel(cfg, len(base.vocab))
    got = model.load_state_dict(base.model.state_dict(), strict=False)  # everything but the new members
    assert not got.unexpected_keys and all(k.startswith("glob_extra.") for k in got.missing_keys)
    for g, m in zip(model.glob_extra[base.config.global_members - 1 :], members):
        g.load_state_dict(m.model.state_dict())
    return model.eval()


def ensemble_parts(ens: LoadedAlign) -> list[AlignModel | GlobalModel]:
    """ensemble_align undone: an ensemble's hybrid model (its own global term kept) and each extra global
    model, as models of their own (the hybrid's and members' scores sum to the ensemble's, member_scores)."""
    if ens.config.arch != "hybrid" or ens.config.global_members < 2:
        raise ModelError(f"{ens.path}: not an ensemble (a hybrid model with global members; vsa train ensemble)")
    hybrid = AlignModel(dataclasses.replace(ens.config, global_members=1), len(ens.vocab))
    got = hybrid.load_state_dict(ens.model.state_dict(), strict=False)
    assert not got.missing_keys and all(k.startswith("glob_extra.") for k in got.unexpected_keys)
    parts: list[AlignModel | GlobalModel] = [hybrid.eval()]
    for g in ens.model.glob_extra:
        m = GlobalModel(dataclasses.replace(ens.config, arch="global", global_members=1), len(ens.vocab))
        m.load_state_dict(g.state_dict())
        parts.append(m.eval())
    return parts


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
