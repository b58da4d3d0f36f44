"""Training the alignment model (`vsa train embed`): the ranking loss over batches of photos and
sentences, optional text-only pretraining, early stopping on dev Recall@K, resumable files."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.config import EMBED_PRESETS, RegionConfig, from_dict
from ..core.device import pick_device
from ..core.errors import DatasetError, ModelError, UsageError
from ..data.datasets import load_flickr8k
from ..data.vocab import Vocab, build_vocab, pad_ids
from ..evaluation.metrics import mean_recall, retrieval_metrics
from ..evaluation.recall import retrieval_data, score_all
from ..models import checkpoint
from ..models.alignment import build_model, load_align, ranking_loss, save_align
from ..vision.features import FeatureStore, same_extractor
from . import distributed
from .common import MixedPrecision, TrainState, clip_elementwise, cpu_copy, make_optimizer, run_epochs, seed_everything


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



def text_pairs(records: list[Any], vocab: Any) -> list[list[list[int]]]:
    """Each record's sentences as word-id lists (records with fewer than 2 usable sentences dropped)."""
    groups = [[e for e in (vocab.encode_text(s) for s in r.sentences) if e] for r in records]
    return [g for g in groups if len(g) >= 2]


def pretrain_text(model: Any, groups: list[list[list[int]]], cfg: Any, device: torch.device,
                  batch_size: int = 128, temperature: float = 0.05, deadline: float | None = None,
                  on_step: Callable[[int, int, int, float], None] | None = None) -> list[float]:
    """Text-only pretraining of the model's sentence side: two sentences of the same photo should be
    each other's nearest neighbour among the batch (symmetric InfoNCE on the cosine of sentence vectors
    Σ_t s_t, which is what score() sums against the image). `groups` holds the sentences of each photo
    (text_pairs). Runs cfg.text_pretrain epochs (each draws one pair per photo) or until `deadline`
    (time.perf_counter()); the image side gets no gradient. Returns the mean loss of each epoch."""
    params = [p for n, p in model.named_parameters() if ".image." not in f".{n}"]  # text side only
    opt = torch.optim.Adam(params, lr=cfg.text_pretrain_lr)
    steps = (len(groups) + batch_size - 1) // batch_size
    losses: list[float] = []
    model.train()
    for epoch in range(1, cfg.text_pretrain + 1):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + epoch)
        torch.manual_seed(cfg.seed * 1000 + 500 + epoch)
        perm = torch.randperm(len(groups), generator=gen).tolist()
        total, n = 0.0, 0
        for a in range(0, len(perm), batch_size):
            batch = [groups[i] for i in perm[a : a + batch_size]]
            if len(batch) < 2:
                continue
            picks = [torch.randperm(len(g), generator=gen)[:2].tolist() for g in batch]
            ids, lengths = pad_ids([g[p[0]] for g, p in zip(batch, picks)] + [g[p[1]] for g, p in zip(batch, picks)])
            ids, lengths = ids.to(device), lengths.to(device)
            z = F.normalize(model.encode_words(ids, lengths).sum(1), dim=-1)  # (2B, out_dim)
            za, zb = z[: len(batch)], z[len(batch) :]
            logits = za @ zb.T / temperature  # (B, B): diagonal = same photo
            target = torch.arange(len(batch), device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_elementwise(params, cfg.clip)
            opt.step()
            total, n = total + loss.item(), n + 1
            if on_step:
                on_step(epoch, n, steps, total / n)
            if deadline is not None and time.perf_counter() > deadline:
                break
        losses.append(total / max(n, 1))
        if deadline is not None and time.perf_counter() > deadline:
            break
    return losses


def embed_config(preset: str, changes: dict[str, Any], init: str | Path | None = None) -> Any:
    """The config a run starts with: the preset's, or with `init` the config saved in that model file
    (its shape must stay: the weights start from it), with `changes` (training options) applied."""
    from ..core.config import preset as pick

    base = load_align(init).config if init is not None else pick(EMBED_PRESETS, preset)
    return dataclasses.replace(base, **changes)


def train_embed(features: str | Path, out: str | Path, cfg: Any = None, *, vocab: Any = None,
                dataset: Any = None, init: str | Path | None = None, min_count: int = 5,
                device: str | None = None, resume: bool = False,
                epochs: int | None = None, max_minutes: float | None = None, amp: bool | None = None,
                on_step: Callable[[int, int, int, float], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> EmbedResult:
    """Train the alignment model (or the global baseline, cfg.arch == "global") on the train-split
    photos present in the feature store `features`; early stopping on dev Recall@K.

    `dataset` (default: Flickr8k) names the photos' splits and captions; the vocabulary (unless given)
    is its training split's words seen `min_count` times. `init`: an alignment model file to start
    from (its vocabulary extended by the new training words, whose rows start fresh; cfg must keep
    its shape, see embed_config); its querybank is not carried over (vsa train querybank adds one).

    Each step is a batch of cfg.batch_size distinct photos with one of their sentences each; an
    epoch shows every sentence once (5 rounds over the photos). Loss: ranking_loss / batch size.
    `out` is written atomically after every epoch: the best weights so far (what users load) and
    train_state {epoch, best_metric, bad_epochs, history, optimizer, last weights} for `resume`.
    When training ends the optimizer and last weights are dropped (the file stays small); resuming
    such a file restarts the optimizer from the best weights. `epochs` overrides cfg.epochs (the
    total, counting epochs already run). on_step(epoch, step, steps_per_epoch, loss) and
    on_epoch(history_row) report progress. amp: mixed precision (None: on for CUDA, see MixedPrecision).

    Under torchrun (WORLD_SIZE > 1) the model trains with DistributedDataParallel: a step is a
    global batch of WORLD_SIZE x batch_size photos, each rank encodes its shard and the loss sees
    the negatives of every rank (distributed.ranking_loss_part); only rank 0 evaluates, reports
    and writes `out`."""
    t_start = time.perf_counter()
    out = Path(out)
    dev_ = pick_device(device)
    world, rank, dev_ = distributed.init(dev_)  # (1, 0, dev_) outside torchrun
    mp = MixedPrecision(dev_, amp)
    train_state: dict[str, Any] = {}
    pretrain_losses: list[float] = []
    start_state: dict[str, torch.Tensor] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        if init is not None:
            raise UsageError("--resume continues the run saved in --out; --init starts a new one")
        if not out.exists():
            raise UsageError(f"--resume: {out} does not exist yet")
        ck = checkpoint.load(out, kind="align")
        cfg = from_dict(type(EMBED_PRESETS["default"]), ck.config)
        vocab = Vocab.from_dict(ck.vocab)
        train_state = ck.train_state
        best_state = ck.state_dict
        start_state = train_state.get("last_state_dict") or ck.state_dict
    init_model = load_align(init) if init is not None and not resume else None
    cfg = cfg or (init_model.config if init_model is not None else EMBED_PRESETS["default"])
    total_epochs = epochs if epochs is not None else cfg.epochs
    if cfg.loss not in ("sum", "max"):
        raise UsageError(f"unknown loss {cfg.loss!r}; choose sum or max")

    ds = dataset if dataset is not None else load_flickr8k()
    with FeatureStore(features, readonly=True) as store:
        region_cfg = store.config
        if resume and ck.region_config and not same_extractor(from_dict(RegionConfig, ck.region_config), region_cfg):
            raise UsageError(f"--resume: {features} was made by another extractor than {out}'s features")
        train_recs = [r for r in ds.present("train") if r.image_id in store]
        dev_recs = [r for r in ds.present("dev") if r.image_id in store]
        if not train_recs:
            raise DatasetError(f"{features}: holds none of the {ds.name} train-split photos "
                               f"(extract them with vsa features extract and the same --dataset options)")
        if init_model is not None and not same_extractor(init_model.region_config, region_cfg):
            raise UsageError(f"--init {init}: trained on other features than {features} holds "
                             f"(extract them with its region preset)")
        if vocab is None:
            vocab = build_vocab(ds, min_count, base=init_model.vocab if init_model is not None else None)
        elif init_model is not None and vocab.itos[: len(init_model.vocab)] != init_model.vocab.itos:
            raise UsageError(f"--init {init}: the vocabulary given does not extend the model's")
        train = retrieval_data(train_recs, store, vocab)
        dev = retrieval_data(dev_recs, store, vocab) if dev_recs else None
    if train.feats.shape[-1] != cfg.feature_dim:
        raise UsageError(f"features are {train.feats.shape[-1]}-d, the config expects {cfg.feature_dim}")

    seed_everything(cfg.seed)
    model = build_model(cfg, len(vocab)).to(dev_)
    if start_state is not None:
        model.load_state_dict(start_state)
    else:
        if cfg.glove:  # with --init: the new words' rows (the others come from the model next)
            model.init_glove(vocab)
        if init_model is not None:
            checkpoint.load_grown(model, init_model.model.state_dict(), len(init_model.vocab), init)
        elif cfg.text_pretrain > 0:  # captions of every training-split photo, on disk or not (no dev/test text)
            deadline = t_start + max_minutes * 60 / 2 if max_minutes is not None else None
            pretrain_losses = pretrain_text(model, text_pairs(ds.split("train"), vocab), cfg, dev_,
                                            deadline=deadline)
    params: Any = model.parameters()
    if cfg.text_lr_scale != 1.0:  # e.g. a pretrained sentence side that should move less than the image side
        text = [p for n, p in model.named_parameters() if ".image." not in f".{n}"]
        image = [p for n, p in model.named_parameters() if ".image." in f".{n}"]
        params = [{"params": image}, {"params": text, "lr": cfg.lr * cfg.text_lr_scale}]
    opt = make_optimizer(cfg, params)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed optimizer state overwrites them
    if train_state.get("optimizer"):
        opt.load_state_dict(train_state["optimizer"])
    encoders = distributed.wrap(model, dev_) if world > 1 else None

    # The whole training set lives on the device: Flickr8k's 6,000 training photos x 20 regions x
    # 1,280 float32 features are ~610 MB.
    feats, region_mask = train.feats.to(dev_), train.region_mask.to(dev_)
    ids, lengths = train.ids.to(dev_), train.lengths.to(dev_)
    n_img = len(train.image_ids)
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(n_img)]
    rounds = max(len(p) for p in per_image)
    bsz = min(cfg.batch_size * world, n_img)  # the global batch: world x batch_size photos
    steps = rounds * ((n_img + bsz - 1) // bsz)

    state = TrainState(epoch=int(train_state.get("epoch", 0)), best_epoch=int(train_state.get("best_epoch", 0)),
                       best_score=float(train_state.get("best_metric", float("-inf"))),
                       bad_epochs=int(train_state.get("bad_epochs", 0)),
                       history=list(train_state.get("history", [])),
                       best_info=dict(train_state.get("best_dev", {})), best_weights=best_state)

    def metrics_blob() -> dict[str, Any]:
        return {"dev": state.best_info, "dev_mean_recall": state.best_score, "best_epoch": state.best_epoch,
                "train_photos": n_img, "dev_photos": len(dev_recs), "features": region_cfg.extractor_id(),
                "train_seconds": round(sum(h["seconds"] for h in state.history), 1), "dataset": ds.name,
                **({"init": str(init)} if init is not None else {}),
                **({"text_pretrain_loss": [round(x, 4) for x in pretrain_losses]} if pretrain_losses else {})}

    def file_state() -> dict[str, Any]:
        """train_state as embed files have always stored it (what --resume reads)."""
        return {"epoch": state.epoch, "best_metric": state.best_score, "best_epoch": state.best_epoch,
                "bad_epochs": state.bad_epochs, "best_dev": state.best_info, "history": state.history}

    def one_epoch(epoch: int) -> tuple[dict[str, Any], float, dict[str, Any]]:
        t0 = time.perf_counter()
        seed_everything(cfg.seed * 1000 + epoch)  # same shuffles and dropout masks after --resume
        hardest = cfg.loss == "max" and epoch > cfg.warmup_sum
        decay = 0.1 if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * decay
        model.train()
        order = [p[torch.randperm(len(p))] for p in per_image]  # each photo's sentences, shuffled
        data_gen = None  # ranks must draw the same global batches whatever their dropout drew: own generator
        if world > 1:
            data_gen = torch.Generator()
            data_gen.set_state(torch.get_rng_state())
        total_loss, n_steps = 0.0, 0
        for r in range(rounds):
            perm = torch.randperm(n_img, generator=data_gen)
            for a in range(0, n_img, bsz):
                img = perm[a : a + bsz]
                if len(img) < max(2, world):  # a ranking loss needs negatives (and every rank a photo)
                    continue
                sent = torch.stack([order[i][r % len(order[i])] for i in img.tolist()]).to(dev_)
                img = img.to(dev_)
                t_max = int(lengths[sent].max())
                with mp.autocast():
                    if world > 1:  # this rank's rows and columns of the global batch's loss
                        loss = distributed.ranking_loss_part(encoders, feats, region_mask, ids, lengths, img, sent,
                                                             cfg.margin, hardest=hardest) / len(img)
                    else:
                        scores = model(feats[img], region_mask[img], ids[sent, :t_max], lengths[sent])  # (B, B)
                        loss = ranking_loss(scores.float(), cfg.margin, hardest=hardest) / len(img)
                if not torch.isfinite(loss):
                    raise ModelError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                                     f"lower the learning rate (now {cfg.lr}) or use --normalize")
                opt.zero_grad(set_to_none=True)
                # DDP averages gradients over ranks; the ranks' losses are parts of one sum: x world.
                mp.step(loss * world, opt, model.parameters(), cfg.clip)
                total_loss += distributed.all_sum(loss) if world > 1 else loss.item()
                n_steps += 1
                if on_step and rank == 0:
                    on_step(epoch, n_steps, steps, total_loss / n_steps)
        row: dict[str, Any] = {"epoch": epoch, "loss": total_loss / max(n_steps, 1)}
        if dev is not None and rank == 0:
            dev_metrics = retrieval_metrics(score_all(model, dev, dev_), dev.sent_image, reps=0)
            metric = mean_recall(dev_metrics)
            row["dev"] = {d: {k: round(v, 2) for k, v in m.items() if not k.endswith("_ci")}
                          for d, m in dev_metrics.items()}
            row["dev_mean_recall"] = round(metric, 2)
        else:
            metric = -row["loss"]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if world > 1:  # rank 0's dev verdict (and clock) holds for all: early stopping stays in step
            row, metric = distributed.broadcast_object((row, metric))
        return row, metric, row.get("dev", {})

    def save(final: bool) -> None:
        # Every epoch: the best weights (what users load), plus the optimizer and, when they differ
        # from the best, the last weights, so that --resume continues exactly.
        last = cpu_copy(model)
        blob = {**file_state(), "optimizer": opt.state_dict(),
                "last_state_dict": {} if state.best_epoch == state.epoch else last}
        if rank == 0:
            save_align(model, vocab, region_cfg, out, metrics_blob(), blob, state_dict=state.best_weights or last)

    def time_up() -> bool:
        up = max_minutes is not None and time.perf_counter() - t_start > max_minutes * 60
        return up if world == 1 else distributed.broadcast_object(up)

    stopped = run_epochs(state, total_epochs, cfg.patience, model, one_epoch, save,
                         on_epoch=on_epoch if rank == 0 else None, time_up=time_up)

    # Finished: keep the best weights and a small train_state (no optimizer, no last weights).
    if state.best_weights is None:
        state.best_weights = cpu_copy(model)
    if rank == 0:
        save_align(model, vocab, region_cfg, out, metrics_blob(), {**file_state(), "finished": True},
                   state_dict=state.best_weights)
    distributed.barrier()  # the other ranks return once rank 0's file is written
    return EmbedResult(out, state.epoch, state.best_epoch, state.best_score, state.best_info, state.history,
                       time.perf_counter() - t_start, stopped)
