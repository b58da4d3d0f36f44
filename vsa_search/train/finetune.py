"""Fine-tuning the CNN's top with the ranking loss (`vsa train finetune`): the embedding of
train/embed.py trained end to end with the last CNN stages (vision/trunk.CNNTop) on the stored
lower-stage maps (`vsa features maps`) and the feature store's boxes. Same batches, loss, early
stopping on dev and resumable file as train_embed; the CNN top has its own (lower) learning rate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import EmbedConfig, MapConfig, RegionConfig, from_dict, to_dict, top_id
from ..core.errors import DatasetError, ModelError, UsageError
from ..data.datasets import load_flickr8k
from ..data.vocab import UNK, Vocab, build_vocab, pad_ids
from ..evaluation.recall import RetrievalData
from ..models import checkpoint
from ..models.alignment import build_model, load_align, model_loss, save_align
from ..vision.features import FeatureStore
from ..vision.trunk import CNNTop, MapStore, top_weights, tuned_top
from .common import (
    TrainState,
    clip_elementwise,
    cpu_copy,
    load_resumable,
    require_features,
    resume_state,
    run_epochs,
    seed_everything,
)
from .embed import EmbedResult, dev_recall, epoch_batches

KIND = "align-top"


class TopAlign(nn.Module):
    """An alignment model whose region features come from a trainable CNN top: maps + boxes ->
    features (B, R, D) -> the alignment model's scores. A global model uses the full-image box alone."""

    def __init__(self, cfg: EmbedConfig, map_cfg: MapConfig, vocab_size: int, top: CNNTop | None = None):
        super().__init__()
        self.cfg, self.map_cfg = cfg, map_cfg
        self.top = top if top is not None else CNNTop(map_cfg)
        self.align = build_model(cfg, vocab_size)

    def features(self, maps: torch.Tensor, boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, D) region features and (B, R) mask of each photo's boxes (R: the most boxes)."""
        if self.cfg.arch == "global" or self.cfg.regions == "full":
            boxes = [b[:1] for b in boxes]
        flat = self.top.regions(maps, boxes)
        r_max = max(len(b) for b in boxes)
        feats = flat.new_zeros(len(boxes), r_max, flat.shape[-1])
        mask = torch.zeros(len(boxes), r_max, dtype=torch.bool, device=flat.device)
        a = 0
        for i, b in enumerate(boxes):
            feats[i, : len(b)] = flat[a : a + len(b)]
            mask[i, : len(b)] = True
            a += len(b)
        return feats, mask

    def forward(self, maps: torch.Tensor, boxes: list[torch.Tensor], ids: torch.Tensor,
                lengths: torch.Tensor) -> torch.Tensor:
        feats, mask = self.features(maps, boxes)
        return self.align(feats, mask, ids, lengths)

    def loss(self, maps: torch.Tensor, boxes: list[torch.Tensor], ids: torch.Tensor, lengths: torch.Tensor
             ) -> torch.Tensor:
        """The batch's ranking loss (not divided by its size), as alignment.model_loss has it."""
        feats, mask = self.features(maps, boxes)
        return model_loss(self.align, feats, mask, ids, lengths, self.cfg.margin)


def save_top_align(model: TopAlign, vocab: Vocab, region_cfg: RegionConfig, path: str | Path,
                   metrics: dict, train_state: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    config = {"embed": to_dict(model.cfg), "map": to_dict(model.map_cfg)}
    return checkpoint.save(checkpoint.Checkpoint(
        kind=KIND, config=config, vocab=vocab.to_dict(), region_config=to_dict(region_cfg),
        state_dict={k: v.detach().cpu().clone() for k, v in state_dict.items()}, metrics=metrics,
        train_state=train_state), path)


def load_top_align(path: str | Path) -> tuple[TopAlign, Vocab, RegionConfig, checkpoint.Checkpoint]:
    ck = checkpoint.load(path, kind=KIND)
    vocab = Vocab.from_dict(ck.vocab)
    model = TopAlign(from_dict(EmbedConfig, ck.config["embed"]), from_dict(MapConfig, ck.config["map"]), len(vocab))
    checkpoint.load_weights(model, ck, path)
    return model.eval(), vocab, from_dict(RegionConfig, ck.region_config), ck


def export_align(src: str | Path, out: str | Path) -> dict[str, Any]:
    """A fine-tuning run's file (kind align-top) as an ordinary alignment model file (kind align, float16)
    that every command loads: its region config names the fine-tuned top (RegionConfig.top = top_id of
    the top's float16 weights), which travels inside it, so photos are encoded through that very top
    (float16-rounded) wherever the model is used. Its features need their own feature store
    (`vsa features extract --model OUT`); the querybank, if wanted, is added afterwards."""
    model, vocab, region_cfg, ck = load_top_align(src)
    weights = top_weights(model.top)
    region = dataclasses.replace(region_cfg, top=top_id(weights))
    metrics = {**ck.metrics, "exported_from": str(src), "top": region.top}
    save_align(model.align, vocab, region, out, metrics=metrics, half=True, top=weights)
    return {"model": str(out), "from": str(src), "top": region.top, "extractor": region.extractor_id(),
            "best_epoch": ck.metrics.get("best_epoch"), "dev_mean_recall": ck.metrics.get("dev_mean_recall")}


@dataclass
class PhotoData:
    """One split as the fine-tuning sees it: float16 maps, float boxes, encoded sentences."""

    image_ids: list[str]
    maps: torch.Tensor  # (N, C, H, W) float16
    boxes: list[torch.Tensor]  # (R_i, 4) float xyxy in each photo's own coordinates
    ids: torch.Tensor
    lengths: torch.Tensor
    sent_image: torch.Tensor
    sentences: list[str]


def photo_data(records: list[Any], fstore: FeatureStore, mstore: MapStore, vocab: Vocab) -> PhotoData:
    ids_ = [r.image_id for r in records]
    maps = torch.from_numpy(np.stack([mstore.get(i) for i in ids_]))
    boxes = [torch.from_numpy(fstore.get(i).boxes).float() for i in ids_]
    sents = [(i, s) for i, r in enumerate(records) for s in r.sentences]
    ids, lengths = pad_ids([vocab.encode_text(s) or [UNK] for _, s in sents])  # as evaluation.retrieval_data
    return PhotoData(ids_, maps, boxes, ids, lengths, torch.tensor([i for i, _ in sents]), [s for _, s in sents])


@torch.no_grad()
def dev_data(model: TopAlign, data: PhotoData, chunk: int = 50) -> RetrievalData:
    """A split's photos as the alignment model sees them: features through the (current) top."""
    model.eval()
    parts = [model.features(data.maps[a : a + chunk], data.boxes[a : a + chunk])
             for a in range(0, len(data.maps), chunk)]
    r_max = max(f.shape[1] for f, _ in parts)
    feats = torch.cat([nn.functional.pad(f, (0, 0, 0, r_max - f.shape[1])) for f, _ in parts])
    mask = torch.cat([nn.functional.pad(m, (0, r_max - m.shape[1])) for _, m in parts])
    return RetrievalData(data.image_ids, feats, mask, data.ids, data.lengths, data.sent_image, data.sentences)


@dataclass
class FinetuneRun:
    """What a fine-tuning run works with once it is set up (fresh, from --init or from --resume)."""

    cfg: EmbedConfig
    vocab: Vocab
    region_cfg: RegionConfig
    model: TopAlign
    opt: torch.optim.Optimizer  # two parameter groups: the embedding (cfg.lr) and the top (top_lr, if > 0)
    base_lrs: list[float]  # each group's learning rate before decay
    params: list[nn.Parameter]  # what the optimizer moves
    train: PhotoData
    per_image: list[torch.Tensor]  # each training photo's sentences (rows of train.ids)
    dev: PhotoData | None
    state: TrainState
    facts: dict[str, Any]  # what the model file says about the run besides its figures


def train_finetune(features: str | Path, maps: str | Path, out: str | Path, cfg: EmbedConfig | None = None,
                   *, top_lr: float = 3e-5, init: str | Path | None = None, dataset: Any = None,
                   min_count: int = 5, resume: bool = False, epochs: int | None = None,
                   on_step: Callable[[int, int, int, float], None] | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None) -> EmbedResult:
    """Train the embedding (`cfg`, or `init`'s weights and config: an alignment model trained on the
    frozen features of the same extractor) together with the CNN top whose input maps `maps` holds,
    on the training split; early stopping on dev mean Recall@K. top_lr 0 keeps the top frozen (the
    control: the same trainer and features). The batches of each epoch are train_embed's (same
    seed, same photos). `out` is written atomically after every epoch: the best weights and the
    train state (common.TrainState.to_file) that `resume` continues exactly, with its config and
    top_lr. `epochs` overrides cfg.epochs (the total). CPU only: every step runs the top forward
    and backward."""
    t_start = time.perf_counter()
    out = Path(out)
    ck = load_resumable(out, KIND, init) if resume else None
    init_model = load_align(init) if init is not None else None
    if ck is not None:
        cfg, top_lr = from_dict(EmbedConfig, ck.config["embed"]), float(ck.metrics.get("top_lr", top_lr))
    cfg = cfg or (init_model.config if init_model is not None else None)
    if cfg is None:
        raise UsageError("give a config or an --init model")
    if init_model is not None and build_model(cfg, 1).state_dict().keys() != init_model.model.state_dict().keys():
        raise UsageError(f"--init {init}: another model shape than the config's")
    ds = dataset if dataset is not None else load_flickr8k()
    vocab = Vocab.from_dict(ck.vocab) if ck is not None else init_model.vocab if init_model is not None else None
    origin = ((f"--resume {out}", from_dict(RegionConfig, ck.region_config), from_dict(MapConfig, ck.config["map"]))
              if ck is not None else
              (f"--init {init}", init_model.region_config, None) if init_model is not None else None)
    vocab, region_cfg, map_cfg, train, dev = _read_data(features, maps, ds, vocab, min_count, origin)
    model = _new_model(cfg, map_cfg, vocab, ck, init_model)
    facts = {"maps": map_cfg.map_id(), "top_lr": top_lr, "dataset": ds.name,
             **({"init": str(init)} if init is not None else {})}
    run = _finetune_run(cfg, top_lr, vocab, region_cfg, model, train, dev, ck, facts)
    stopped = run_epochs(run.state, epochs if epochs is not None else cfg.epochs, cfg.patience, model,
                         lambda epoch: finetune_epoch(run, epoch, on_step),
                         lambda: _save(run, out, finished=False), on_epoch)
    _save(run, out, finished=True)
    s = run.state
    return EmbedResult(out, s.epoch, s.best_epoch, s.best_score, s.best_info, s.history,
                          time.perf_counter() - t_start, stopped)


def finetune_epoch(run: FinetuneRun, epoch: int, on_step: Callable[[int, int, int, float], None] | None = None
                   ) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """Train one epoch on train_embed's batches of that epoch (embed.epoch_batches), the top's
    features computed anew each step. Returns (history row, score, dev figures); the score is dev
    mean Recall@{1,5,10}, or -loss without dev photos."""
    t0 = time.perf_counter()
    cfg, model, opt, data = run.cfg, run.model, run.opt, run.train
    seed_everything(cfg.seed * 1000 + epoch)  # train_embed's batches, and the same after --resume
    decay = 0.1 if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0
    for g, lr0 in zip(opt.param_groups, run.base_lrs):
        g["lr"] = lr0 * decay
    model.train()
    steps, batches = epoch_batches(run.per_image, cfg.batch_size)
    total, n = 0.0, 0
    for img, sent in batches:
        t_max = int(data.lengths[sent].max())
        loss = model.loss(data.maps[img], [data.boxes[i] for i in img.tolist()], data.ids[sent, :t_max],
                          data.lengths[sent]) / len(img)
        if not torch.isfinite(loss):
            raise ModelError(f"training diverged at epoch {epoch} (loss {loss.item()}); lower the learning rates")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_elementwise(run.params, cfg.clip)
        opt.step()
        total, n = total + loss.item(), n + 1
        if on_step:
            on_step(epoch, n, steps, total / n)
    row: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
    metric = dev_recall(model.align, dev_data(model, run.dev), "cpu", row) if run.dev is not None else -row["loss"]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row, metric, row.get("dev", {})


def _read_data(features: str | Path, maps: str | Path, ds: Any, vocab: Vocab | None, min_count: int,
               origin: tuple[str, RegionConfig, MapConfig | None] | None
               ) -> tuple[Vocab, RegionConfig, MapConfig, PhotoData, PhotoData | None]:
    """The vocabulary (given, or built on the training split), the stores' configs, and the training
    and dev photos both stores hold. `origin`: the option, the region config and the map config (if
    it has one) of the model the run continues (--resume or --init), if any."""
    with FeatureStore(features, readonly=True) as fs, MapStore(maps, readonly=True) as ms:
        map_cfg, region_cfg = ms.config, fs.config
        if (map_cfg.backbone, map_cfg.input_size) != (region_cfg.backbone, region_cfg.input_size):
            raise UsageError(f"{maps}: maps of {map_cfg.backbone} at {map_cfg.input_size} px, but {features} holds "
                             f"{region_cfg.backbone} features at {region_cfg.input_size} px")
        if origin is not None:
            # A model that carries a fine-tuned top goes on from it: the store holds ImageNet's features of its boxes.
            require_features(region_cfg, origin[1].imagenet(), features, origin[0])
            if origin[2] is not None and origin[2] != map_cfg:
                raise UsageError(f"{origin[0]}: trained on other maps than {maps} holds")
        train_recs = [r for r in ds.present("train") if r.image_id in fs and r.image_id in ms]
        dev_recs = [r for r in ds.present("dev") if r.image_id in fs and r.image_id in ms]
        if not train_recs:
            raise DatasetError(f"{maps}: holds none of the {ds.name} train-split photos (vsa features maps)")
        if vocab is None:
            vocab = build_vocab(ds, min_count)
        train = photo_data(train_recs, fs, ms, vocab)
        dev = photo_data(dev_recs, fs, ms, vocab) if dev_recs else None
    return vocab, region_cfg, map_cfg, train, dev


def _new_model(cfg: EmbedConfig, map_cfg: MapConfig, vocab: Vocab, ck: checkpoint.Checkpoint | None,
               init_model: Any) -> TopAlign:
    """The model with its starting weights: the --init model's top (ImageNet's if it has none) and its
    embedding (or GloVe rows); a resumed run's weights come later, with its optimizer."""
    seed_everything(cfg.seed)
    top = None
    if ck is None and init_model is not None and init_model.top:  # continue its top, not ImageNet's
        top = tuned_top(init_model.region_config, init_model.top, map_cfg)
    model = TopAlign(cfg, map_cfg, len(vocab), top)
    if ck is None and init_model is not None:
        model.align.load_state_dict(init_model.model.state_dict())
    elif ck is None and cfg.glove:
        model.align.init_glove(vocab)
    return model


def _finetune_run(cfg: EmbedConfig, top_lr: float, vocab: Vocab, region_cfg: RegionConfig, model: TopAlign,
                  train: PhotoData, dev: PhotoData | None, ck: checkpoint.Checkpoint | None,
                  facts: dict[str, Any]) -> FinetuneRun:
    """The optimizer with its two parameter groups (the top's only when top_lr > 0; it stays frozen
    otherwise), its state and the last weights put back when resuming."""
    for p in model.top.parameters():
        p.requires_grad_(top_lr > 0)
    groups = [{"params": list(model.align.parameters()), "lr": cfg.lr}]
    if top_lr > 0:
        groups.append({"params": list(model.top.parameters()), "lr": top_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed optimizer state overwrites them
    state = resume_state(ck, model, opt) if ck is not None else TrainState()
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(len(train.image_ids))]
    facts = {"train_photos": len(train.image_ids), "dev_photos": len(dev.image_ids) if dev else 0,
             "features": region_cfg.extractor_id(), **facts}
    return FinetuneRun(cfg, vocab, region_cfg, model, opt, base_lrs, [p for g in groups for p in g["params"]],
                       train, per_image, dev, state, facts)


def _save(run: FinetuneRun, out: Path, finished: bool) -> None:
    """Write `out`: the best weights so far (what users load), the run's figures, the train state."""
    s = run.state
    metrics = {"dev": s.best_info, "dev_mean_recall": s.best_score, "best_epoch": s.best_epoch,
               "train_seconds": round(sum(h["seconds"] for h in s.history), 1), **run.facts}
    save_top_align(run.model, run.vocab, run.region_cfg, out, metrics, s.to_file(run.model, run.opt, finished),
                   s.best_weights or cpu_copy(run.model))
