"""Training the alignment model (`vsa train embed`): the ranking loss over batches of photos and
sentences, optional text-only pretraining, early stopping on dev Recall@K, resumable files."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import EMBED_PRESETS, RegionConfig, from_dict
from ..core.device import pick_device
from ..core.errors import DatasetError, ModelError, UsageError
from ..data.datasets import load_flickr8k
from ..data.vocab import Vocab, build_vocab, pad_ids
from ..evaluation.metrics import mean_recall, retrieval_metrics
from ..evaluation.recall import RetrievalData, retrieval_data, score_all
from ..models import checkpoint
from ..models.alignment import build_model, load_align, save_align, split_top
from ..models.checkpoint import Checkpoint
from ..vision.features import FeatureStore
from . import distributed
from .common import (
    MixedPrecision,
    TrainState,
    clip_elementwise,
    cpu_copy,
    load_resumable,
    make_optimizer,
    require_features,
    resume_state,
    run_epochs,
    seed_everything,
)


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


@dataclass
class EmbedRun:
    """What a training run works with once it is set up (fresh, from --init or from --resume)."""

    cfg: Any
    vocab: Any
    region_cfg: RegionConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    base_lrs: list[float]  # each parameter group's learning rate before decay
    mp: MixedPrecision
    device: torch.device
    train: RetrievalData  # the training photos and sentences, on the device
    per_image: list[torch.Tensor]  # each training photo's sentences (rows of train.ids)
    dev: RetrievalData | None
    par: distributed.OneProcess  # the processes that train together (distributed.Ranks under torchrun)
    state: TrainState
    facts: dict[str, Any]  # what the model file says about the run besides its figures
    top: dict[str, np.ndarray] | None = None  # the fine-tuned CNN top of the features (the store's), if any


def train_embed(features: str | Path, out: str | Path, cfg: Any = None, *, vocab: Any = None,
                dataset: Any = None, init: str | Path | None = None, min_count: int = 5,
                device: str | None = None, resume: bool = False,
                epochs: int | None = None, max_minutes: float | None = None, amp: bool | None = None,
                keep_train_state: bool = True, on_step: Callable[[int, int, int, float], None] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> EmbedResult:
    """Train the alignment model (or the global baseline, cfg.arch == "global") on the train-split
    photos present in the feature store `features`; early stopping on dev Recall@K.

    `dataset` (default: Flickr8k) names the photos' splits and captions; the vocabulary (unless given)
    is its training split's words seen `min_count` times. `init`: an alignment model file to start
    from (its vocabulary extended by the new training words, whose rows start fresh; cfg must keep
    its shape, see embed_config); its querybank is not carried over (vsa train querybank adds one).

    Each step is a batch of cfg.batch_size distinct photos with one of their sentences each; an
    epoch shows every sentence once (5 rounds over the photos). Loss: ranking_loss / batch size.
    `out` is written atomically after every epoch: the best weights so far (what users load) and the
    train state (common.TrainState.to_file) that `resume` continues exactly; keep_train_state=False
    leaves the resumable part out of the final file. `epochs` overrides cfg.epochs (the total,
    counting epochs already run). on_step(epoch, step, steps_per_epoch, loss) and on_epoch(history_row)
    report progress. amp: mixed precision (None: on for CUDA, see MixedPrecision).

    Under torchrun (WORLD_SIZE > 1) the model trains with DistributedDataParallel: a step is a
    global batch of WORLD_SIZE x batch_size photos, each rank encodes its shard and the loss sees
    the negatives of every rank (distributed.Ranks); only rank 0 evaluates, reports and writes `out`."""
    t_start = time.perf_counter()
    out = Path(out)
    _, _, dev_ = distributed.init(pick_device(device))  # the rank's own GPU under torchrun
    ck = load_resumable(out, "align", init) if resume else None
    if ck is not None:  # the CNN top the file carries is the store's, not weights of the model trained here
        ck = dataclasses.replace(ck, state_dict=split_top(ck.state_dict)[0])
    init_model = load_align(init) if init is not None else None
    if ck is not None:
        cfg, vocab = from_dict(type(EMBED_PRESETS["default"]), ck.config), Vocab.from_dict(ck.vocab)
    cfg = cfg or (init_model.config if init_model is not None else EMBED_PRESETS["default"])
    if cfg.loss not in ("sum", "max"):
        raise UsageError(f"unknown loss {cfg.loss!r}; choose sum or max")
    ds = dataset if dataset is not None else load_flickr8k()
    origin = ((f"--resume {out}", ck.region_config) if ck is not None else
              (f"--init {init}", init_model.region_config) if init_model is not None else None)
    vocab, region_cfg, top, train, dev = _read_data(features, ds, cfg, vocab, min_count, init_model, origin)
    deadline = t_start + max_minutes * 60 / 2 if max_minutes is not None else None  # for text pretraining
    model, facts = _new_model(cfg, vocab, ds, dev_, ck, init_model, init, deadline)
    run = _embed_run(cfg, vocab, region_cfg, model, train, dev, ck, MixedPrecision(dev_, amp), facts)
    run.top = top

    def time_up() -> bool:  # every rank stops after the same epoch
        return run.par.share(max_minutes is not None and time.perf_counter() - t_start > max_minutes * 60)

    main = run.par.rank == 0
    stopped = run_epochs(run.state, epochs if epochs is not None else cfg.epochs, cfg.patience, model,
                         lambda epoch: embed_epoch(run, epoch, on_step if main else None),
                         lambda: _save(run, out, finished=False), on_epoch if main else None, time_up)
    _save(run, out, finished=True, keep=keep_train_state)
    distributed.barrier()  # the other ranks return once rank 0's file is written
    s = run.state
    return EmbedResult(out, s.epoch, s.best_epoch, s.best_score, s.best_info, s.history,
                       time.perf_counter() - t_start, stopped)


def embed_epoch(run: EmbedRun, epoch: int,
                on_step: Callable[[int, int, int, float], None] | None = None) -> tuple[dict[str, Any], float, dict]:
    """Train one epoch: every sentence once, in rounds over the photos (one sentence per photo a
    round), a step per batch of distinct photos. Returns (history row, score, dev figures); the score
    is dev mean Recall@{1,5,10}, or -loss without dev photos. Under torchrun a step is the global
    batch of world x batch_size photos, of which each rank computes its part of the loss."""
    t0 = time.perf_counter()
    cfg, model, opt, par, data = run.cfg, run.model, run.opt, run.par, run.train
    seed_everything(cfg.seed * 1000 + epoch)  # same shuffles and dropout masks after --resume
    hardest = cfg.loss == "max" and epoch > cfg.warmup_sum
    decay = 0.1 if cfg.lr_decay_epoch and epoch >= cfg.lr_decay_epoch else 1.0
    for g, lr0 in zip(opt.param_groups, run.base_lrs):
        g["lr"] = lr0 * decay
    model.train()
    # the global batch: world x batch_size photos (and every rank a photo)
    steps, batches = epoch_batches(run.per_image, cfg.batch_size * par.world, par.batch_generator, max(2, par.world))
    total_loss, n_steps = 0.0, 0
    for img, sent in batches:
        img, sent = img.to(run.device), sent.to(run.device)
        with run.mp.autocast():
            loss = par.ranking_loss(data, img, sent, cfg.margin, hardest) / len(img)
        if not torch.isfinite(loss):
            raise ModelError(f"training diverged at epoch {epoch} (loss {loss.item()}); "
                             f"lower the learning rate (now {cfg.lr}) or use --normalize")
        opt.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; the ranks' losses are parts of one sum: x world.
        run.mp.step(loss * par.world, opt, model.parameters(), cfg.clip)
        total_loss, n_steps = total_loss + par.sum(loss), n_steps + 1
        if on_step:
            on_step(epoch, n_steps, steps, total_loss / n_steps)
    row: dict[str, Any] = {"epoch": epoch, "loss": total_loss / max(n_steps, 1)}
    metric = dev_recall(run.model, run.dev, run.device, row) if run.dev is not None and par.rank == 0 else -row["loss"]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row, metric = par.share((row, metric))  # rank 0's dev verdict (and clock): early stopping stays in step
    return row, metric, row.get("dev", {})


def epoch_batches(per_image: list[torch.Tensor], batch_size: int,
                  generator: Callable[[], torch.Generator | None] = lambda: None,
                  min_photos: int = 2) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The batches of one epoch: every sentence once, in rounds over the photos (one sentence per
    photo a round), a batch of `batch_size` distinct photos at a time (smaller than `min_photos`:
    skipped; a ranking loss needs negatives). `per_image`: each photo's sentence indices. Draws each
    photo's sentence order from the global RNG (seeded by the caller) now, then each round's photo
    order from `generator()` (made after that; None: the global RNG). Returns (steps, batches of
    (photo indices, their sentences' indices))."""
    order = [p[torch.randperm(len(p))] for p in per_image]
    gen = generator()
    n_img, rounds = len(order), max(len(p) for p in order)
    bsz = min(batch_size, n_img)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for r in range(rounds):
            perm = torch.randperm(n_img, generator=gen)
            for a in range(0, n_img, bsz):
                img = perm[a : a + bsz]
                if len(img) >= min_photos:
                    yield img, torch.stack([order[i][r % len(order[i])] for i in img.tolist()])

    return rounds * ((n_img + bsz - 1) // bsz), batches()


def dev_recall(model: torch.nn.Module, dev: RetrievalData, device: torch.device | str, row: dict[str, Any]) -> float:
    """Dev retrieval figures of `model` into the history row; returns their mean Recall@{1,5,10}."""
    dev_metrics = retrieval_metrics(score_all(model, dev, device), dev.sent_image, reps=0)
    row["dev"] = {d: {k: round(v, 2) for k, v in m.items() if not k.endswith("_ci")} for d, m in dev_metrics.items()}
    row["dev_mean_recall"] = round(mean_recall(dev_metrics), 2)
    return mean_recall(dev_metrics)


def _read_data(features: str | Path, ds: Any, cfg: Any, vocab: Any, min_count: int, init_model: Any,
               origin: tuple[str, Any] | None
               ) -> tuple[Any, RegionConfig, dict[str, np.ndarray] | None, RetrievalData, RetrievalData | None]:
    """The vocabulary (given, resumed, or built on the training split), the store's extractor config
    and fine-tuned CNN top (if any), and the training and dev photos the store holds, with their
    sentences. `origin`: the option and the region config of the model the run continues (--resume
    or --init), if any; an --init model of ImageNet's features may go on with a fine-tuned top's."""
    with FeatureStore(features, readonly=True) as store:
        region_cfg, top = store.config, store.top()
        if origin is not None and origin[1]:
            require_features(region_cfg, origin[1], features, origin[0], onto_top=origin[0].startswith("--init"))
        train_recs = [r for r in ds.present("train") if r.image_id in store]
        dev_recs = [r for r in ds.present("dev") if r.image_id in store]
        if not train_recs:
            raise DatasetError(f"{features}: holds none of the {ds.name} train-split photos "
                               f"(extract them with vsa features extract and the same --dataset options)")
        if vocab is None:
            vocab = build_vocab(ds, min_count, base=init_model.vocab if init_model is not None else None)
        elif init_model is not None and vocab.itos[: len(init_model.vocab)] != init_model.vocab.itos:
            raise UsageError(f"{origin[0]}: the vocabulary given does not extend the model's")
        train = retrieval_data(train_recs, store, vocab)
        dev = retrieval_data(dev_recs, store, vocab) if dev_recs else None
    if train.feats.shape[-1] != cfg.feature_dim:
        raise UsageError(f"features are {train.feats.shape[-1]}-d, the config expects {cfg.feature_dim}")
    return vocab, region_cfg, top, train, dev


def _new_model(cfg: Any, vocab: Any, ds: Any, device: torch.device, ck: Checkpoint | None, init_model: Any,
               init: Any, deadline: float | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model with its starting weights (a resumed run's come later, with its optimizer), and the
    facts about its start that the model file keeps (data set, init model, text pretraining)."""
    seed_everything(cfg.seed)
    model = build_model(cfg, len(vocab)).to(device)
    facts: dict[str, Any] = {"dataset": ds.name, **({"init": str(init)} if init is not None else {})}
    if ck is not None:
        return model, {**facts, **{k: ck.metrics[k] for k in ("init", "text_pretrain_loss") if k in ck.metrics}}
    if cfg.glove:  # with --init: the new words' rows (the others come from the model next)
        model.init_glove(vocab)
    if init_model is not None:
        checkpoint.load_grown(model, init_model.model.state_dict(), len(init_model.vocab), init)
    elif cfg.text_pretrain > 0:  # captions of every training-split photo, on disk or not (no dev/test text)
        losses = pretrain_text(model, text_pairs(ds.split("train"), vocab), cfg, device, deadline=deadline)
        facts["text_pretrain_loss"] = [round(x, 4) for x in losses]
    return model, facts


def _embed_run(cfg: Any, vocab: Any, region_cfg: RegionConfig, model: torch.nn.Module, train: RetrievalData,
               dev: RetrievalData | None, ck: Checkpoint | None, mp: MixedPrecision, facts: dict[str, Any]) -> EmbedRun:
    """The optimizer (its state and the last weights put back when resuming), the training data on
    the model's device, and the processes that train together."""
    device = next(model.parameters()).device
    params: Any = model.parameters()
    if cfg.text_lr_scale != 1.0:  # e.g. a pretrained sentence side that should move less than the image side
        text = [p for n, p in model.named_parameters() if ".image." not in f".{n}"]
        image = [p for n, p in model.named_parameters() if ".image." in f".{n}"]
        params = [{"params": image}, {"params": text, "lr": cfg.lr * cfg.text_lr_scale}]
    opt = make_optimizer(cfg, params)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed optimizer state overwrites them
    state = resume_state(ck, model, opt) if ck is not None else TrainState()
    # The whole training set lives on the device: Flickr8k's 6,000 training photos x 20 regions x
    # 1,280 float32 features are ~610 MB.
    on_device = dataclasses.replace(train, feats=train.feats.to(device), region_mask=train.region_mask.to(device),
                                    ids=train.ids.to(device), lengths=train.lengths.to(device))
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(len(train.image_ids))]
    facts = {"train_photos": len(train.image_ids), "dev_photos": len(dev.image_ids) if dev else 0,
             "features": region_cfg.extractor_id(), **facts}
    return EmbedRun(cfg, vocab, region_cfg, model, opt, base_lrs, mp, device, on_device, per_image, dev,
                    distributed.processes(model, device), state, facts)


def _save(run: EmbedRun, out: Path, finished: bool, keep: bool = True) -> None:
    """Rank 0 writes `out`: the best weights so far (what users load), the run's figures, the train state."""
    if run.par.rank != 0:
        return
    s = run.state
    metrics = {"dev": s.best_info, "dev_mean_recall": s.best_score, "best_epoch": s.best_epoch,
               "train_seconds": round(sum(h["seconds"] for h in s.history), 1), **run.facts}
    save_align(run.model, run.vocab, run.region_cfg, out, metrics, s.to_file(run.model, run.opt, finished, keep),
               state_dict=s.best_weights or cpu_copy(run.model), top=run.top)
