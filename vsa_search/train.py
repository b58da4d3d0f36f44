"""Training: the alignment model (`train_embed`) and the caption generator (`train_caption`).
Shared pieces first; each trainer below owns its own section."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import to_dict


def pick_device(device: str | None = None) -> torch.device:
    """The one place that chooses CPU or CUDA; everything else receives the result."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def clip_elementwise(params, clip: float) -> None:
    """The paper clips gradients element-wise (not by norm)."""
    if clip > 0:
        torch.nn.utils.clip_grad_value_(params, clip)


# --------------------------------------------------------------------------- embed (alignment model)


@dataclass
class EmbedResult:
    path: Path
    epoch: int  # the last epoch run (1-based, counting epochs before a --resume)
    best_epoch: int
    best_metric: float  # dev mean Recall@{1,5,10} of the kept weights (-loss when there are no dev photos)
    dev: dict[str, Any]  # dev retrieval metrics of the kept weights
    history: list[dict[str, Any]]  # one row per epoch: epoch, loss, dev, seconds
    seconds: float  # training time of this call
    stopped: str  # "epochs" | "early" (patience) | "time" (max_minutes)


def _init_glove(model: torch.nn.Module, vocab: Any) -> int:
    target = getattr(model, "sentence", model)  # AlignModel keeps words in .sentence; GlobalModel itself
    return target.init_glove(vocab)


def _save_embed(path: Path, cfg: Any, vocab: Any, region_cfg: Any, state_dict: dict[str, torch.Tensor],
                metrics: dict[str, Any], train_state: dict[str, Any]) -> None:
    from . import checkpoint
    from .config import to_dict

    checkpoint.save(checkpoint.Checkpoint(kind="align", config=to_dict(cfg), vocab=vocab.to_dict(),
                                          region_config=to_dict(region_cfg), state_dict=state_dict,
                                          metrics=metrics, train_state=train_state), path)


def _make_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    from .errors import UsageError

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def train_embed(features: str | Path, out: str | Path, cfg: Any = None, *, vocab: Any = None,
                dataset: Any = None, device: str | None = None, resume: bool = False,
                epochs: int | None = None, max_minutes: float | None = None,
                on_step: Callable[[int, int, int, float], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> EmbedResult:
    """Train the alignment model (or the global baseline, cfg.arch == "global") on the train-split
    photos present in the feature store `features`; early stopping on dev Recall@K.

    Each step is a batch of cfg.batch_size distinct photos with one of their sentences each; an
    epoch shows every sentence once (5 rounds over the photos). Loss: ranking_loss / batch size.
    `out` is written atomically after every epoch: the best weights so far (what users load) and
    train_state {epoch, best_metric, bad_epochs, history, optimizer, last weights} for `resume`.
    When training ends the optimizer and last weights are dropped (the file stays small); resuming
    such a file restarts the optimizer from the best weights. `epochs` overrides cfg.epochs (the
    total, counting epochs already run). on_step(epoch, step, steps_per_epoch, loss) and
    on_epoch(history_row) report progress."""
    from .config import EMBED_PRESETS, from_dict
    from .datasets import load_flickr8k
    from .embedding import build_model, ranking_loss
    from .errors import DatasetError, UsageError
    from .evaluate import mean_recall, retrieval_data, retrieval_metrics, score_all
    from .features import FeatureStore
    from .vocab import build_flickr8k_vocab

    t_start = time.perf_counter()
    out = Path(out)
    dev_ = pick_device(device)
    train_state: dict[str, Any] = {}
    start_state: dict[str, torch.Tensor] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        from . import checkpoint
        from .vocab import Vocab

        if not out.exists():
            raise UsageError(f"--resume: {out} does not exist yet")
        ck = checkpoint.load(out, kind="align")
        cfg = from_dict(type(EMBED_PRESETS["default"]), ck.config)
        vocab = Vocab.from_dict(ck.vocab)
        train_state = ck.train_state
        best_state = ck.state_dict
        start_state = train_state.get("last_state_dict") or ck.state_dict
    cfg = cfg or EMBED_PRESETS["default"]
    total_epochs = epochs if epochs is not None else cfg.epochs
    if cfg.loss not in ("sum", "max"):
        raise UsageError(f"unknown loss {cfg.loss!r}; choose sum or max")

    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        region_cfg = store.config
        if resume and ck.region_config and ck.region_config != to_dict(region_cfg):
            raise UsageError(f"--resume: {features} was made by another extractor than {out}'s features")
        train_recs = [r for r in ds.present("train") if r.image_id in store]
        dev_recs = [r for r in ds.present("dev") if r.image_id in store]
        if not train_recs:
            raise DatasetError(f"{features}: holds none of the train-split photos")
        vocab = vocab if vocab is not None else build_flickr8k_vocab()
        train = retrieval_data(train_recs, store, vocab)
        dev = retrieval_data(dev_recs, store, vocab) if dev_recs else None
    if train.feats.shape[-1] != cfg.feature_dim:
        raise UsageError(f"features are {train.feats.shape[-1]}-d, the config expects {cfg.feature_dim}")

    seed_everything(cfg.seed)
    model = build_model(cfg, len(vocab)).to(dev_)
    if start_state is not None:
        model.load_state_dict(start_state)
    elif cfg.glove:
        _init_glove(model, vocab)
    opt = _make_optimizer(cfg, model.parameters())
    if train_state.get("optimizer"):
        opt.load_state_dict(train_state["optimizer"])

    # The whole training set lives on the device: ~750 photos x 20 regions is ~80 MB.
    feats, region_mask = train.feats.to(dev_), train.region_mask.to(dev_)
    ids, lengths = train.ids.to(dev_), train.lengths.to(dev_)
    n_img = len(train.image_ids)
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(n_img)]
    rounds = max(len(p) for p in per_image)
    bsz = min(cfg.batch_size, n_img)
    steps = rounds * ((n_img + bsz - 1) // bsz)

    history: list[dict[str, Any]] = list(train_state.get("history", []))
    start_epoch = int(train_state.get("epoch", 0))
    best_metric = float(train_state.get("best_metric", float("-inf")))
    best_epoch = int(train_state.get("best_epoch", 0))
    bad_epochs = int(train_state.get("bad_epochs", 0))
    best_dev: dict[str, Any] = dict(train_state.get("best_dev", {}))
    stopped = "epochs"
    epoch = start_epoch

    def metrics_blob() -> dict[str, Any]:
        return {"dev": best_dev, "dev_mean_recall": best_metric, "best_epoch": best_epoch,
                "train_photos": n_img, "dev_photos": len(dev_recs), "features": region_cfg.extractor_id(),
                "train_seconds": round(sum(h["seconds"] for h in history), 1)}

    for epoch in range(start_epoch + 1, total_epochs + 1):
        if bad_epochs >= cfg.patience:
            stopped = "early"
            epoch -= 1
            break
        t0 = time.perf_counter()
        seed_everything(cfg.seed * 1000 + epoch)  # same shuffles and dropout masks after --resume
        model.train()
        order = [p[torch.randperm(len(p))] for p in per_image]  # each photo's sentences, shuffled
        total_loss, n_steps = 0.0, 0
        for r in range(rounds):
            perm = torch.randperm(n_img)
            for a in range(0, n_img, bsz):
                img = perm[a : a + bsz]
                if len(img) < 2:  # a ranking loss needs negatives
                    continue
                sent = torch.stack([order[i][r % len(order[i])] for i in img.tolist()]).to(dev_)
                img = img.to(dev_)
                t_max = int(lengths[sent].max())
                scores = model(feats[img], region_mask[img], ids[sent, :t_max], lengths[sent])  # (B, B)
                loss = ranking_loss(scores, cfg.margin, hardest=cfg.loss == "max") / len(img)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                clip_elementwise(model.parameters(), cfg.clip)
                opt.step()
                total_loss += loss.item()
                n_steps += 1
                if on_step:
                    on_step(epoch, n_steps, steps, total_loss / n_steps)
        row: dict[str, Any] = {"epoch": epoch, "loss": total_loss / max(n_steps, 1)}
        if dev is not None:
            dev_metrics = retrieval_metrics(score_all(model, dev, dev_), dev.sent_image, reps=0)
            metric = mean_recall(dev_metrics)
            row["dev"] = {d: {k: round(v, 2) for k, v in m.items() if not k.endswith("_ci")}
                          for d, m in dev_metrics.items()}
            row["dev_mean_recall"] = round(metric, 2)
        else:
            dev_metrics, metric = {}, -row["loss"]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        if metric > best_metric:
            best_metric, best_epoch, bad_epochs, best_dev = metric, epoch, 0, row.get("dev", {})
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        last = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state = {"epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                 "best_dev": best_dev, "history": history, "optimizer": opt.state_dict(),
                 "last_state_dict": {} if best_epoch == epoch else last}
        _save_embed(out, cfg, vocab, region_cfg, best_state or last, metrics_blob(), state)
        if on_epoch:
            on_epoch(row)
        if max_minutes is not None and time.perf_counter() - t_start > max_minutes * 60:
            stopped = "time"
            break
    else:
        if bad_epochs >= cfg.patience and epoch > start_epoch:
            stopped = "early"

    # Finished: keep the best weights and a small train_state (no optimizer, no last weights).
    if best_state is None:
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    final_state = {"epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                   "best_dev": best_dev, "history": history, "finished": True}
    _save_embed(out, cfg, vocab, region_cfg, best_state, metrics_blob(), final_state)
    return EmbedResult(out, epoch, best_epoch, best_metric, best_dev, history,
                       time.perf_counter() - t_start, stopped)


# --------------------------------------------------------------------------- caption (generator)
