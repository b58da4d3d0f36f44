"""Fine-tuning the CNN's top with the ranking loss (`vsa train finetune`): the embedding of
train/embed.py trained end to end with the last CNN stages (vision/trunk.CNNTop) on the stored
lower-stage maps (`vsa features maps`) and the feature store's boxes. Same batches, loss, early
stopping on dev and resumable file as train_embed; the CNN top has its own (lower) learning rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import EmbedConfig, MapConfig, RegionConfig, from_dict, to_dict
from ..core.device import pick_device
from ..core.errors import DatasetError, ModelError, UsageError
from ..data.datasets import load_flickr8k
from ..data.vocab import UNK, Vocab, build_vocab, pad_ids
from ..evaluation.metrics import mean_recall, retrieval_metrics
from ..evaluation.recall import RetrievalData, score_all
from ..models import checkpoint
from ..models.alignment import build_model, load_align, ranking_loss
from ..vision.features import FeatureStore
from ..vision.trunk import CNNTop, MapStore
from .common import TrainState, clip_elementwise, cpu_copy, run_epochs, seed_everything

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
def dev_metrics(model: TopAlign, data: PhotoData, chunk: int = 50) -> dict[str, Any]:
    """Retrieval metrics on a split: features through the (current) top, scored as `vsa eval recall` scores."""
    model.eval()
    parts = [model.features(data.maps[a : a + chunk], data.boxes[a : a + chunk])
             for a in range(0, len(data.maps), chunk)]
    r_max = max(f.shape[1] for f, _ in parts)
    feats = torch.cat([nn.functional.pad(f, (0, 0, 0, r_max - f.shape[1])) for f, _ in parts])
    mask = torch.cat([nn.functional.pad(m, (0, r_max - m.shape[1])) for _, m in parts])
    rd = RetrievalData(data.image_ids, feats, mask, data.ids, data.lengths, data.sent_image, data.sentences)
    return retrieval_metrics(score_all(model.align, rd), data.sent_image, reps=0)


@dataclass
class FinetuneResult:
    path: Path
    epoch: int
    best_epoch: int
    best_metric: float
    dev: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    stopped: str


def train_finetune(features: str | Path, maps: str | Path, out: str | Path, cfg: EmbedConfig | None = None,
                   *, top_lr: float = 3e-5, init: str | Path | None = None, dataset: Any = None,
                   min_count: int = 5, resume: bool = False, epochs: int | None = None,
                   on_step: Callable[[int, int, int, float], None] | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Train the embedding (`cfg`, or `init`'s weights and config: an alignment model trained on the
    frozen features of the same extractor) together with the CNN top whose input maps `maps` holds,
    on the training split; early stopping on dev mean Recall@K. top_lr 0 keeps the top frozen (the
    control: the same trainer and features). `out` is written every epoch (best weights + what
    --resume needs). CPU only: every step runs the top forward and backward."""
    t_start = time.perf_counter()
    out = Path(out)
    device = pick_device("cpu")
    train_state: dict[str, Any] = {}
    vocab: Vocab | None = None
    start_state = best_state = None
    init_model = None
    if resume:
        if not out.exists():
            raise UsageError(f"--resume: {out} does not exist yet")
        model, vocab, _, ck = load_top_align(out)
        cfg, top_lr = model.cfg, float(ck.train_state.get("top_lr", top_lr))
        train_state, best_state = ck.train_state, ck.state_dict
        start_state = train_state.get("last_state_dict") or ck.state_dict
    elif init is not None:
        init_model = load_align(init)  # cfg: its config with training options changed (train.embed.embed_config)
        cfg = cfg or init_model.config
        if build_model(cfg, 1).state_dict().keys() != init_model.model.state_dict().keys():
            raise UsageError(f"--init {init}: another model shape than the config's")
    if cfg is None:
        raise UsageError("give a config or an --init model")
    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as fs, MapStore(maps, readonly=True) as ms:
        map_cfg, region_cfg = ms.config, fs.config
        if (map_cfg.backbone, map_cfg.input_size) != (region_cfg.backbone, region_cfg.input_size):
            raise UsageError(f"{maps}: maps of {map_cfg.backbone} at {map_cfg.input_size} px, but {features} holds "
                             f"{region_cfg.backbone} features at {region_cfg.input_size} px")
        if init_model is not None and init_model.region_config.extractor_id() != region_cfg.extractor_id():
            raise UsageError(f"--init {init}: trained on other features than {features} holds")
        train_recs = [r for r in ds.present("train") if r.image_id in fs and r.image_id in ms]
        dev_recs = [r for r in ds.present("dev") if r.image_id in fs and r.image_id in ms]
        if not train_recs:
            raise DatasetError(f"{maps}: holds none of the {ds.name} train-split photos (vsa features maps)")
        if vocab is None:
            vocab = init_model.vocab if init_model is not None else build_vocab(ds, min_count)
        train = photo_data(train_recs, fs, ms, vocab)
        dev = photo_data(dev_recs, fs, ms, vocab) if dev_recs else None

    seed_everything(cfg.seed)
    model = TopAlign(cfg, map_cfg, len(vocab)).to(device)
    if start_state is not None:
        model.load_state_dict(start_state)
    elif init_model is not None:
        model.align.load_state_dict(init_model.model.state_dict())
    elif cfg.glove:
        model.align.init_glove(vocab)
    for p in model.top.parameters():
        p.requires_grad_(top_lr > 0)
    groups = [{"params": list(model.align.parameters()), "lr": cfg.lr}]
    if top_lr > 0:
        groups.append({"params": list(model.top.parameters()), "lr": top_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    if train_state.get("optimizer"):
        opt.load_state_dict(train_state["optimizer"])
    params = [p for g in groups for p in g["params"]]
    total_epochs = epochs if epochs is not None else cfg.epochs

    n_img = len(train.image_ids)
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(n_img)]
    rounds = max(len(p) for p in per_image)
    bsz = min(cfg.batch_size, n_img)
    steps = rounds * ((n_img + bsz - 1) // bsz)
    state = TrainState(epoch=int(train_state.get("epoch", 0)), best_epoch=int(train_state.get("best_epoch", 0)),
                       best_score=float(train_state.get("best_metric", float("-inf"))),
                       bad_epochs=int(train_state.get("bad_epochs", 0)), history=list(train_state.get("history", [])),
                       best_info=dict(train_state.get("best_dev", {})), best_weights=best_state)

    def one_epoch(epoch: int) -> tuple[dict[str, Any], float, dict[str, Any]]:
        t0 = time.perf_counter()
        seed_everything(cfg.seed * 1000 + epoch)  # the batches of train_embed's epoch, and the same after --resume
        decay = 0.1 if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * decay
        model.train()
        order = [p[torch.randperm(len(p))] for p in per_image]
        total, n = 0.0, 0
        for r in range(rounds):
            perm = torch.randperm(n_img)
            for a in range(0, n_img, bsz):
                img = perm[a : a + bsz].tolist()
                if len(img) < 2:
                    continue
                sent = torch.stack([order[i][r % len(order[i])] for i in img])
                t_max = int(train.lengths[sent].max())
                scores = model(train.maps[img], [train.boxes[i] for i in img], train.ids[sent, :t_max],
                               train.lengths[sent])
                loss = ranking_loss(scores.float(), cfg.margin) / len(img)
                if not torch.isfinite(loss):
                    raise ModelError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                                     "lower the learning rates")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                clip_elementwise(params, cfg.clip)
                opt.step()
                total, n = total + loss.item(), n + 1
                if on_step:
                    on_step(epoch, n, steps, total / n)
        row: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1)}
        info: dict[str, Any] = {}
        metric = -row["loss"]
        if dev is not None:
            m = dev_metrics(model, dev)
            metric = mean_recall(m)
            info = {d: {k: round(v, 2) for k, v in x.items() if not k.endswith("_ci")} for d, x in m.items()}
            row["dev"], row["dev_mean_recall"] = info, round(metric, 2)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row, metric, info

    def file_state(final: bool) -> dict[str, Any]:
        s = {"epoch": state.epoch, "best_metric": state.best_score, "best_epoch": state.best_epoch,
             "bad_epochs": state.bad_epochs, "best_dev": state.best_info, "history": state.history, "top_lr": top_lr}
        if not final:
            s.update(optimizer=opt.state_dict(),
                     last_state_dict={} if state.best_epoch == state.epoch else cpu_copy(model))
        return s

    def metrics_blob() -> dict[str, Any]:
        return {"dev": state.best_info, "dev_mean_recall": state.best_score, "best_epoch": state.best_epoch,
                "train_photos": n_img, "dev_photos": len(dev_recs), "features": region_cfg.extractor_id(),
                "maps": map_cfg.map_id(), "top_lr": top_lr, "dataset": ds.name,
                "train_seconds": round(sum(h["seconds"] for h in state.history), 1),
                **({"init": str(init)} if init is not None else {})}

    def save(final: bool) -> None:
        save_top_align(model, vocab, region_cfg, out, metrics_blob(), file_state(False),
                       state.best_weights or cpu_copy(model))

    stopped = run_epochs(state, total_epochs, cfg.patience, model, one_epoch, save, on_epoch=on_epoch)
    save_top_align(model, vocab, region_cfg, out, metrics_blob(), {**file_state(True), "finished": True},
                   state.best_weights or cpu_copy(model))
    return FinetuneResult(out, state.epoch, state.best_epoch, state.best_score, state.best_info, state.history,
                          time.perf_counter() - t_start, stopped)
