"""Training: the alignment model (`train_embed`) and the caption generator (`train_caption`).
Shared pieces first; each trainer below owns its own section."""

from __future__ import annotations

import contextlib
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


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot of the weights that later optimizer steps cannot change."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class MixedPrecision:
    """Autocast for training steps: bf16 on GPUs that have it, else fp16 with a GradScaler. CUDA
    only: amp=None means on for CUDA and off for CPU (CPU always trains in float32). Losses are
    computed from float32 scores/logits; the optimizer keeps float32 weights."""

    def __init__(self, device: torch.device, amp: bool | None = None):
        from .errors import UsageError

        if amp and device.type != "cuda":
            raise UsageError(f"--amp needs a CUDA device (training on {device})")
        self.enabled = device.type == "cuda" and amp is not False
        self.dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if self.enabled else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params, clip: float) -> None:
        """backward, element-wise clip (of unscaled gradients) and optimizer step."""
        params = list(params)
        if self.scaler is None:
            loss.backward()
            clip_elementwise(params, clip)
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        clip_elementwise(params, clip)
        self.scaler.step(opt)  # skipped when fp16 overflowed; the scale then shrinks
        self.scaler.update()

    def describe(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.enabled else "float32"


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


def _make_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    from .errors import UsageError

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adam")


def text_pairs(records: list[Any], vocab: Any) -> list[list[list[int]]]:
    """Each record's sentences as word-id lists (records with fewer than 2 usable sentences dropped)."""
    groups = [[e for e in (vocab.encode_text(s) for s in r.sentences) if e] for r in records]
    return [g for g in groups if len(g) >= 2]


def _pad(seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(q) for q in seqs])
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for j, q in enumerate(seqs):
        ids[j, : len(q)] = torch.tensor(q)
    return ids.to(device), lengths.to(device)


def pretrain_text(model: Any, groups: list[list[list[int]]], cfg: Any, device: torch.device,
                  batch_size: int = 128, temperature: float = 0.05, deadline: float | None = None,
                  on_step: Callable[[int, int, int, float], None] | None = None) -> list[float]:
    """Text-only pretraining of the model's sentence side: two sentences of the same photo should be
    each other's nearest neighbour among the batch (symmetric InfoNCE on the cosine of sentence vectors
    Σ_t s_t, which is what score() sums against the image). `groups` holds the sentences of each photo
    (text_pairs). Runs cfg.text_pretrain epochs (each draws one pair per photo) or until `deadline`
    (time.perf_counter()); the image side gets no gradient. Returns the mean loss of each epoch."""
    import torch.nn.functional as F

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
            ids, lengths = _pad([g[p[0]] for g, p in zip(batch, picks)] + [g[p[1]] for g, p in zip(batch, picks)],
                                device)
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


def train_embed(features: str | Path, out: str | Path, cfg: Any = None, *, vocab: Any = None,
                dataset: Any = None, device: str | None = None, resume: bool = False,
                epochs: int | None = None, max_minutes: float | None = None, amp: bool | None = None,
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
    on_epoch(history_row) report progress. amp: mixed precision (None: on for CUDA, see MixedPrecision).

    Under torchrun (WORLD_SIZE > 1) the model trains with DistributedDataParallel: a step is a
    global batch of WORLD_SIZE x batch_size photos, each rank encodes its shard and the loss sees
    the negatives of every rank (distributed.ranking_loss_part); only rank 0 evaluates, reports
    and writes `out`."""
    from . import distributed
    from .config import EMBED_PRESETS, from_dict
    from .datasets import load_flickr8k
    from .embedding import build_model, ranking_loss, save_align
    from .errors import DatasetError, ModelError, UsageError
    from .evaluate import mean_recall, retrieval_data, retrieval_metrics, score_all
    from .features import FeatureStore
    from .vocab import build_flickr8k_vocab

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
    else:
        if cfg.glove:
            model.init_glove(vocab)
        if cfg.text_pretrain > 0:  # captions of every training-split photo, on disk or not (no dev/test text)
            deadline = t_start + max_minutes * 60 / 2 if max_minutes is not None else None
            pretrain_losses = pretrain_text(model, text_pairs(ds.split("train"), vocab), cfg, dev_,
                                            deadline=deadline)
    params: Any = model.parameters()
    if cfg.text_lr_scale != 1.0:  # e.g. a pretrained sentence side that should move less than the image side
        text = [p for n, p in model.named_parameters() if ".image." not in f".{n}"]
        image = [p for n, p in model.named_parameters() if ".image." in f".{n}"]
        params = [{"params": image}, {"params": text, "lr": cfg.lr * cfg.text_lr_scale}]
    opt = _make_optimizer(cfg, params)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed optimizer state overwrites them
    if train_state.get("optimizer"):
        opt.load_state_dict(train_state["optimizer"])
    encoders = distributed.wrap(model, dev_) if world > 1 else None

    # The whole training set lives on the device: ~750 photos x 20 regions is ~80 MB.
    feats, region_mask = train.feats.to(dev_), train.region_mask.to(dev_)
    ids, lengths = train.ids.to(dev_), train.lengths.to(dev_)
    n_img = len(train.image_ids)
    per_image = [torch.nonzero(train.sent_image == i).flatten() for i in range(n_img)]
    rounds = max(len(p) for p in per_image)
    bsz = min(cfg.batch_size * world, n_img)  # the global batch: world x batch_size photos
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
                "train_seconds": round(sum(h["seconds"] for h in history), 1),
                **({"text_pretrain_loss": [round(x, 4) for x in pretrain_losses]} if pretrain_losses else {})}

    for epoch in range(start_epoch + 1, total_epochs + 1):
        if bad_epochs >= cfg.patience:
            stopped = "early"
            epoch -= 1
            break
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
            dev_metrics, metric = {}, -row["loss"]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if world > 1:  # rank 0's dev verdict (and clock) holds for all: early stopping stays in step
            row, metric = distributed.broadcast_object((row, metric))
        history.append(row)
        if metric > best_metric:
            best_metric, best_epoch, bad_epochs, best_dev = metric, epoch, 0, row.get("dev", {})
            best_state = _cpu_copy(model)
        else:
            bad_epochs += 1
        last = _cpu_copy(model)
        state = {"epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                 "best_dev": best_dev, "history": history, "optimizer": opt.state_dict(),
                 "last_state_dict": {} if best_epoch == epoch else last}
        if rank == 0:
            save_align(model, vocab, region_cfg, out, metrics_blob(), state, state_dict=best_state or last)
        if on_epoch and rank == 0:
            on_epoch(row)
        time_up = max_minutes is not None and time.perf_counter() - t_start > max_minutes * 60
        if time_up if world == 1 else distributed.broadcast_object(time_up):
            stopped = "time"
            break
    else:
        if bad_epochs >= cfg.patience and epoch > start_epoch:
            stopped = "early"

    # Finished: keep the best weights and a small train_state (no optimizer, no last weights).
    if best_state is None:
        best_state = _cpu_copy(model)
    final_state = {"epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                   "best_dev": best_dev, "history": history, "finished": True}
    if rank == 0:
        save_align(model, vocab, region_cfg, out, metrics_blob(), final_state, state_dict=best_state)
    distributed.barrier()  # the other ranks return once rank 0's file is written
    return EmbedResult(out, epoch, best_epoch, best_metric, best_dev, history,
                       time.perf_counter() - t_start, stopped)


# --------------------------------------------------------------------------- caption (generator)


def caption_sentences(ids: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-id lists -> (inputs, targets), each (S, T) and PAD-filled: START w_1..w_n and
    w_1..w_n END. Sentences longer than max_len words are cut (the generator never says more)."""
    from .vocab import END, PAD, START

    ids = [s[:max_len] for s in ids]
    T = max(len(s) for s in ids) + 1
    inputs = torch.full((len(ids), T), PAD, dtype=torch.long)
    targets = torch.full((len(ids), T), PAD, dtype=torch.long)
    for i, s in enumerate(ids):
        inputs[i, : len(s) + 1] = torch.tensor([START, *s])
        targets[i, : len(s) + 1] = torch.tensor([*s, END])
    return inputs, targets


def caption_split(store, split: str, vocab, max_len: int, root=None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor, torch.Tensor]:
    """The photos of one Flickr8k split that the feature store holds, and their sentences:
    feats (P, D) full-image features, photo (S,) index of each sentence's photo, inputs, targets (S, T)."""
    from .captioner import full_image
    from .datasets import load_flickr8k
    from .text import tokenize

    have = set(store.ids())
    recs = [r for r in load_flickr8k(root).split(split) if r.image_id in have]
    if not recs:
        return torch.zeros(0, store.config.feature_dim), torch.zeros(0, dtype=torch.long), \
            torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    feats = torch.stack([full_image(store.get(r.image_id)) for r in recs])  # (P, D)
    photo, sents = [], []
    for p, r in enumerate(recs):
        for s in r.sentences:
            if toks := tokenize(s):
                photo.append(p)
                sents.append(vocab.encode(toks))
    inputs, targets = caption_sentences(sents, max_len)
    return feats, torch.tensor(photo), inputs, targets


def _caption_batches(n: int, batch_size: int, gen: torch.Generator | None):
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _trim(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the all-PAD columns a batch of short sentences does not need."""
    T = int((targets != 0).sum(1).max())
    return inputs[:, :T], targets[:, :T]


@torch.no_grad()
def caption_perplexity(model, feats: torch.Tensor, photo: torch.Tensor, inputs: torch.Tensor,
                       targets: torch.Tensor, device: torch.device, batch_size: int = 500) -> float:
    """exp(mean cross-entropy per word, END included) over the given sentences."""
    model.eval()
    total, words = 0.0, 0
    for idx in _caption_batches(len(inputs), batch_size, None):
        x, y = _trim(inputs[idx], targets[idx])
        total += float(model.loss(feats[photo[idx]].to(device), x.to(device), y.to(device), reduction="sum"))
        words += int((y != 0).sum())
    return float(np.exp(total / max(words, 1)))


def dev_cider(model, feats: torch.Tensor, refs: list, vocab, max_len: int, beam: int = 3) -> float:
    """CIDEr (x100) of beam-3 captions of the dev photos (feats (P, D), refs: P tuples of sentences)."""
    from .beam import beam_search
    from .evaluate import caption_metrics

    caps = []
    for i in range(0, len(feats), 128):
        caps += beam_search(model, feats[i:i + 128], beam=beam, max_len=max_len)
    cands = {str(i): " ".join(vocab.decode(c.tokens)) for i, c in enumerate(caps)}
    return caption_metrics({str(i): list(r) for i, r in enumerate(refs)}, cands, meteor=False)["CIDEr"]


def _better(rec: dict, best: dict, on_cider: bool) -> bool:
    if on_cider:
        return rec["dev_cider"] > best.get("dev_cider", float("-inf"))
    return rec.get("dev_ppl", rec.get("train_ppl")) < best["dev_ppl"]


def _caption_optimizer(model, cfg):
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=0.99, eps=1e-8)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    from .errors import UsageError

    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose rmsprop or adam")


def train_caption(features, out, cfg, resume: bool = False, device: str | None = None, root=None,
                  keep_train_state: bool = True, on_batch=None, on_epoch=None, amp: bool | None = None,
                  regions=None, init=None) -> dict:
    """Train the caption generator on the full-image features of the training-split photos in the
    feature store `features`; early stopping on dev perplexity (patience cfg.patience).

    `out` is rewritten after every epoch: its weights are the best epoch's; its train_state holds
    the current weights, optimizer and counters so that `resume=True` continues where it stopped
    (keep_train_state=False drops them from the final file: smaller, no longer resumable).
    on_batch(n) and on_epoch(record) report progress. Returns the report (history, best, seconds).
    amp: mixed precision (None: on for CUDA, see MixedPrecision).
    regions: a snippets file (`vsa align export`) whose training-photo snippets (region feature, fragment)
    join the full-image pairs: the region generator. init: a caption model file to start from."""
    import dataclasses
    import time
    from pathlib import Path

    from . import checkpoint
    from .captioner import Captioner, save_caption
    from .config import CaptionConfig, from_dict, to_dict
    from .datasets import load_flickr8k
    from .errors import ModelError, UsageError
    from .features import FeatureStore
    from .vocab import Vocab, build_flickr8k_vocab

    if cfg.cell not in ("rnn", "lstm"):
        raise UsageError(f"unknown caption cell {cfg.cell!r}; choose rnn or lstm")
    out = Path(out)
    dev = pick_device(device)
    mp = MixedPrecision(dev, amp)
    ts: dict = {}
    vocab = None
    if resume:
        if not out.exists():
            raise UsageError(f"--resume: {out} does not exist yet")
        ck = checkpoint.load(out, kind="caption")
        ts = ck.train_state
        if "optimizer" not in ts:
            raise ModelError(f"{out}: holds no training state to resume (saved without it)")
        saved = from_dict(CaptionConfig, ck.config)
        # Only the epoch budget and patience may change on resume; anything else is another model.
        if dataclasses.replace(saved, epochs=cfg.epochs, patience=cfg.patience) != cfg:
            raise UsageError(f"--resume: {out} was trained with another config "
                             f"(preset/cell/optimizer differ); use another --out")
        vocab = Vocab.from_dict(ck.vocab)
    vocab = vocab or build_flickr8k_vocab(root)

    with FeatureStore(features, readonly=True) as store:
        region_cfg = store.config
        if resume and to_dict(region_cfg) != ck.region_config:
            raise UsageError(f"--resume: {features} holds other features than {out} was trained on")
        train = caption_split(store, "train", vocab, cfg.max_len, root)
        if regions is not None:
            from .align import add_snippets

            train = add_snippets(train, store, regions, vocab, cfg.max_len, root)
        dev_data = caption_split(store, "dev", vocab, cfg.max_len, root)
        # The same photos, in the same order, as dev_data's features: references for dev CIDEr.
        dev_refs = [r.sentences for r in load_flickr8k(root).split("dev") if r.image_id in store]
    if len(train[1]) == 0:
        raise UsageError(f"{features}: holds no training-split photos")
    if cfg.select not in ("ppl", "cider"):
        raise UsageError(f"unknown selection {cfg.select!r}; choose ppl or cider")

    seed_everything(cfg.seed)
    model = Captioner(cfg, len(vocab)).to(dev)
    if init is not None and not resume:
        from .captioner import load_caption

        init_model = load_caption(init)
        if init_model.vocab != vocab:
            raise UsageError(f"--init {init}: its vocabulary differs from this training run's")
        try:
            model.load_state_dict(init_model.model.state_dict())
        except RuntimeError:
            raise UsageError(f"--init {init}: a {init_model.config.cell} model of another shape than --preset/--cell "
                             f"ask for") from None
    opt = _caption_optimizer(model, cfg)
    history: list[dict] = []
    best = {"epoch": 0, "dev_ppl": float("inf")}
    best_sd = _cpu_copy(model)
    bad, start = 0, 1
    if resume:
        model.load_state_dict(ts["current"])
        opt.load_state_dict(ts["optimizer"])
        history, best, bad, start = list(ts["history"]), dict(ts["best"]), int(ts["bad_epochs"]), int(ts["epoch"]) + 1
        best_sd = ck.state_dict
    t_start = time.perf_counter() - float(ts.get("seconds", 0.0))
    feats = train[0].to(dev)
    on_dev = len(dev_data[1]) > 0  # a store without dev photos stops on training perplexity

    def save(final: bool) -> None:
        state = {"epoch": history[-1]["epoch"] if history else 0, "best": best, "bad_epochs": bad,
                 "history": history, "seconds": time.perf_counter() - t_start, "finished": final}
        if keep_train_state or not final:
            state.update(current=_cpu_copy(model),
                         optimizer=opt.state_dict())
        metrics = {"dev_ppl": best["dev_ppl"], "dev_cider": best.get("dev_cider"), "best_epoch": best["epoch"],
                   "train_photos": int(len(train[0])),
                   "train_sentences": int(len(train[1])), "dev_photos": int(len(dev_data[0])),
                   "seconds": round(state["seconds"], 1),
                   **({"regions": str(regions)} if regions else {}), **({"init": str(init)} if init else {})}
        slim = final and not keep_train_state
        save_caption(model, vocab, region_cfg, out, metrics=metrics, train_state=state, state_dict=best_sd, half=slim)

    stopped = bad >= cfg.patience
    for epoch in range(start, cfg.epochs + 1):
        if stopped:
            break
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and order depend on the epoch only: resumable
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for idx in _caption_batches(len(train[1]), cfg.batch_size, gen):
            x, y = _trim(train[2][idx], train[3][idx])
            with mp.autocast():
                loss = model.loss(feats[train[1][idx].to(dev)], x.to(dev), y.to(dev))
            opt.zero_grad(set_to_none=True)
            mp.step(loss, opt, model.parameters(), cfg.clip)
            total, n = total + loss.item() * len(idx), n + len(idx)
            if on_batch:
                on_batch(1)
        ppl = caption_perplexity(model, *(dev_data if on_dev else train), device=dev)
        rec = {"epoch": epoch, "train_loss": total / n, ("dev_ppl" if on_dev else "train_ppl"): ppl,
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        if on_dev and cfg.select == "cider":
            rec["dev_cider"] = dev_cider(model, dev_data[0].to(dev), dev_refs, vocab, cfg.max_len)
        if _better(rec, best, on_dev and cfg.select == "cider"):
            best, bad = {"epoch": epoch, "dev_ppl": ppl, **({"dev_cider": rec["dev_cider"]} if "dev_cider" in rec
                                                              else {})}, 0
            best_sd = _cpu_copy(model)
        else:
            bad += 1
        stopped = bad >= cfg.patience
        save(final=stopped or epoch == cfg.epochs)
        if on_epoch:
            on_epoch(rec)
    if not keep_train_state and history:  # also slims a finished run given to --resume --slim
        save(final=True)
    return {"out": str(out), "history": history, "best": best, "stopped_early": stopped,
            "seconds": round(time.perf_counter() - t_start, 1), "device": str(dev), "precision": mp.describe(),
            "train_photos": int(len(train[0])), "train_sentences": int(len(train[1])),
            "dev_photos": int(len(dev_data[0]))}
