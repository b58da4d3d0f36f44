"""Training the caption generator (`vsa train caption`) on full-image features (the attention
generator: on each photo's region features) and, for the region generator, on region snippets too;
early stopping on dev perplexity or CIDEr."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..align.snippets import MIN_SNIPPET_WORDS, read_snippets, snippet_groups
from ..core.config import CaptionConfig, RegionConfig, from_dict
from ..core.device import pick_device
from ..core.errors import ModelError, StoreError, UsageError
from ..data.datasets import load_flickr8k
from ..data.text import tokenize
from ..data.vocab import END, PAD, START, Vocab, build_vocab
from ..evaluation.metrics import caption_metrics
from ..models import checkpoint
from ..models.attention import NEW_PARAMS
from ..models.beam import beam_search
from ..models.captioner import CELLS, full_image, load_caption, make_captioner, photo_input, save_caption
from ..models.checkpoint import Checkpoint
from ..vision.features import FeatureStore
from .common import (
    MixedPrecision,
    TrainState,
    cpu_copy,
    load_resumable,
    require_features,
    resume_state,
    run_epochs,
    seed_everything,
)


def caption_sentences(ids: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-id lists -> (inputs, targets), each (S, T) and PAD-filled: START w_1..w_n and
    w_1..w_n END. Sentences longer than max_len words are cut (the generator never says more)."""
    ids = [s[:max_len] for s in ids]
    T = max(len(s) for s in ids) + 1
    inputs = torch.full((len(ids), T), PAD, dtype=torch.long)
    targets = torch.full((len(ids), T), PAD, dtype=torch.long)
    for i, s in enumerate(ids):
        inputs[i, : len(s) + 1] = torch.tensor([START, *s])
        targets[i, : len(s) + 1] = torch.tensor([*s, END])
    return inputs, targets


def caption_split(store, split: str, vocab, max_len: int, dataset: Any = None,
                  to_input: Any = full_image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The photos of one split of `dataset` (default: Flickr8k) that the feature store holds, and their
    sentences: feats (P, D) full-image features (or what `to_input` makes of a photo's RegionFeatures),
    photo (S,) index of each sentence's photo, inputs, targets (S, T)."""
    have = set(store.ids())
    recs = [r for r in (dataset if dataset is not None else load_flickr8k()).split(split) if r.image_id in have]
    if not recs:
        return torch.zeros(0, store.config.feature_dim), torch.zeros(0, dtype=torch.long), \
            torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    feats = torch.stack([to_input(store.get(r.image_id)) for r in recs])  # (P, D)
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
    caps = []
    for i in range(0, len(feats), 128):
        caps += beam_search(model, feats[i:i + 128], beam=beam, max_len=max_len)
    cands = {str(i): " ".join(vocab.decode(c.tokens)) for i, c in enumerate(caps)}
    return caption_metrics({str(i): list(r) for i, r in enumerate(refs)}, cands, meteor=False)["CIDEr"]


def _caption_optimizer(model, cfg):
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=0.99, eps=1e-8)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose rmsprop or adam")


def add_snippets(train: tuple[torch.Tensor, ...], store: Any, snippets_path: str | Path, vocab: Any, max_len: int,
                 dataset: Any = None, min_words: int = MIN_SNIPPET_WORDS) -> tuple[torch.Tensor, ...]:
    """Training data for the region generator: the full-image pairs `train` (feats (P, D), photo (S,),
    inputs, targets, as caption_split returns them) plus one pair per snippet of a training
    photo (its region's feature, its fragment). Snippets of any other split are refused: they would
    leak evaluation text into training."""
    feats, photo, inputs, targets = train
    groups = snippet_groups(read_snippets(snippets_path), min_words)
    split = {r.image_id: r.split for r in (dataset if dataset is not None else load_flickr8k()).records}
    if bad := sorted({i for i, _ in groups if split.get(i) != "train"}):
        raise UsageError(f"{snippets_path}: snippets of {len(bad)} photos outside the training split "
                         f"(e.g. {bad[0]}); export them with --split train")
    if missing := sorted({i for i, _ in groups if i not in store}):
        raise StoreError(f"{snippets_path}: {len(missing)} photos are not in the feature store (e.g. {missing[0]})")
    if not groups:
        raise UsageError(f"{snippets_path}: no snippets of {min_words}+ words")
    keys = list(groups)
    cache: dict[str, np.ndarray] = {}
    region_feats = []
    for image_id, region in keys:
        if image_id not in cache:
            cache[image_id] = store.get(image_id).features
        region_feats.append(torch.from_numpy(cache[image_id][region].astype(np.float32)))
    ids, owner = [], []
    for k, key in enumerate(keys):
        for frag in groups[key]:
            ids.append(vocab.encode(frag.split()))
            owner.append(len(feats) + k)
    s_in, s_tg = caption_sentences(ids, max_len)
    T = max(inputs.shape[1], s_in.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]))  # PAD = 0

    return (torch.cat([feats, torch.stack(region_feats)]), torch.cat([photo, torch.tensor(owner)]),
            torch.cat([pad(inputs), pad(s_in)]), torch.cat([pad(targets), pad(s_tg)]))



@dataclass
class CaptionRun:
    """What a training run works with once it is set up (fresh, from --init or from --resume)."""

    cfg: CaptionConfig
    vocab: Any
    region_cfg: RegionConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    mp: MixedPrecision
    device: torch.device
    train: tuple[torch.Tensor, ...]  # feats (P, D), photo (S,), inputs, targets (S, T): caption_split's
    train_feats: torch.Tensor  # train's feats on the device
    dev: tuple[torch.Tensor, ...]  # the same for the dev photos (none: select on training perplexity)
    dev_refs: list  # the dev photos' sentences, in dev's order: references for dev CIDEr
    state: TrainState
    facts: dict[str, Any]  # what the model file says about the run besides its figures

    @property
    def on_dev(self) -> bool:
        return len(self.dev[1]) > 0

    def score(self, best: dict) -> float:
        """Higher is better: dev CIDEr, or minus the (dev, else train) perplexity."""
        return best.get("dev_cider", float("-inf")) if self.on_dev and self.cfg.select == "cider" else -best["dev_ppl"]


def caption_model(cfg: CaptionConfig, n_words: int) -> torch.nn.Module:
    """The generator that `cfg` asks for, untrained: a module with loss(feats, inputs, targets) that
    caption_epoch steps on (the one place that builds a generator to train)."""
    return make_captioner(cfg, n_words)


def train_caption(features, out, cfg, resume: bool = False, device: str | None = None, root=None,
                  keep_train_state: bool = True, on_batch=None, on_epoch=None, amp: bool | None = None,
                  regions=None, init=None, dataset: Any = None, min_count: int = 5) -> dict:
    """Train the caption generator on the full-image features (an attention generator: the region
    features, models/attention.py) of the training-split photos in the feature store `features`; early
    stopping on dev perplexity or dev CIDEr (cfg.select, patience cfg.patience).

    `out` is rewritten after every epoch: its weights are the best epoch's, its train state
    (common.TrainState.to_file) what `resume=True` continues exactly (keep_train_state=False leaves
    it out of the final file, whose weights are then float16: smaller, no longer resumable).
    on_batch(n) and on_epoch(record) report progress. Returns the report (history, best, seconds).
    amp: mixed precision (None: on for CUDA, see MixedPrecision).
    regions: a snippets file (`vsa align export`) whose training-photo snippets (region feature, fragment)
    join the full-image pairs: the region generator. init: a caption model file to start from (its
    vocabulary extended by the new training words, whose rows start fresh).
    dataset: the splits and captions (default: Flickr8k at `root`); the vocabulary is its training
    split's words seen `min_count` times."""
    if cfg.cell not in CELLS:
        raise UsageError(f"unknown caption cell {cfg.cell!r}; choose one of {', '.join(CELLS)}")
    if cfg.cell == "attend" and regions is not None:
        raise UsageError("--regions trains a generator on single region vectors; the attention generator "
                         "reads all of a photo's regions already")
    if cfg.select not in ("ppl", "cider"):
        raise UsageError(f"unknown selection {cfg.select!r}; choose ppl or cider")
    out = Path(out)
    dev = pick_device(device)
    ck = load_resumable(out, "caption", init) if resume else None
    vocab, regions = _resumed(ck, cfg, regions, out) if ck is not None else (None, regions)
    ds = dataset if dataset is not None else load_flickr8k(root)
    init_model = load_caption(init) if init is not None else None
    if init_model is not None and init_model.config.members > 1:
        raise UsageError(f"--init {init}: an ensemble; start from one of its members")
    vocab = vocab or build_vocab(ds, min_count, base=init_model.vocab if init_model is not None else None)
    origin = ((f"--resume {out}", ck.region_config) if ck is not None else
              (f"--init {init}", init_model.region_config) if init_model is not None else None)
    region_cfg, train, dev_data, dev_refs = _read_data(features, ds, vocab, cfg, regions, origin)
    run = _caption_run(cfg, vocab, region_cfg, _new_model(cfg, vocab, dev, init_model, init), train, dev_data,
                       dev_refs, ck, MixedPrecision(dev, amp))
    run.facts.update({"dataset": ds.name, **({"regions": str(regions)} if regions else {}),
                      **({"init": str(init)} if init else {})})
    run_epochs(run.state, cfg.epochs, cfg.patience, run.model, lambda epoch: caption_epoch(run, epoch, on_batch),
               lambda: _save(run, out, finished=False), on_epoch=on_epoch)
    _save(run, out, finished=True, keep=keep_train_state)
    s = run.state
    return {"out": str(out), "history": s.history, "best": s.best_info, "stopped_early": s.bad_epochs >= cfg.patience,
            "seconds": round(s.seconds(), 1), "device": str(dev), "precision": run.mp.describe(),
            **{k: run.facts[k] for k in ("train_photos", "train_sentences", "dev_photos")}}


def caption_epoch(run: CaptionRun, epoch: int, on_batch: Callable[[int], None] | None = None
                  ) -> tuple[dict, float, dict]:
    """Train one epoch: every training sentence once, in shuffled batches of cfg.batch_size; then
    the dev (else training) perplexity and, when selecting on it, dev CIDEr. Returns (history row,
    score, best-epoch figures)."""
    cfg, model, opt, dev = run.cfg, run.model, run.opt, run.device
    _, photo, inputs, targets = run.train
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and order depend on the epoch only: resumable
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    model.train()
    for group in opt.param_groups:  # a function of the epoch alone, so --resume gets the same
        group["lr"] = cfg.lr * cfg.lr_decay ** (epoch - 1)
    t0, total, n = time.perf_counter(), 0.0, 0
    for idx in _caption_batches(len(photo), cfg.batch_size, gen):
        x, y = _trim(inputs[idx], targets[idx])
        with run.mp.autocast():
            loss = model.loss(run.train_feats[photo[idx].to(dev)], x.to(dev), y.to(dev))
        opt.zero_grad(set_to_none=True)
        run.mp.step(loss, opt, model.parameters(), cfg.clip)
        total, n = total + loss.item() * len(idx), n + len(idx)
        if on_batch:
            on_batch(1)
    ppl = caption_perplexity(model, *(run.dev if run.on_dev else run.train), device=dev)
    rec = {"epoch": epoch, "train_loss": total / n, ("dev_ppl" if run.on_dev else "train_ppl"): ppl,
           "seconds": round(time.perf_counter() - t0, 2)}
    if run.on_dev and cfg.select == "cider":
        rec["dev_cider"] = dev_cider(model, run.dev[0].to(dev), run.dev_refs, run.vocab, cfg.max_len)
    best = {"epoch": epoch, "dev_ppl": ppl, **({"dev_cider": rec["dev_cider"]} if "dev_cider" in rec else {})}
    return rec, run.score(best), best


def _resumed(ck: Checkpoint, cfg: CaptionConfig, regions: Any, out: Path) -> tuple[Vocab, Any]:
    """A resumed run's vocabulary and snippets file, once its config is found to be the saved one."""
    saved = from_dict(CaptionConfig, ck.config)
    # Only the epoch budget and patience may change on resume; anything else is another model.
    if dataclasses.replace(saved, epochs=cfg.epochs, patience=cfg.patience) != cfg:
        raise UsageError(f"--resume: {out} was trained with another config "
                         f"(preset/cell/optimizer differ); use another --out")
    # A resumed region generator keeps its snippets: without them it would go on as another model.
    saved_regions = ck.metrics.get("regions")
    if regions is None and saved_regions:
        regions = saved_regions
    elif regions is not None and Path(saved_regions or "").resolve() != Path(regions).resolve():
        raise UsageError(f"--resume: {out} was trained with --regions {saved_regions or '(none)'}, not {regions}")
    return Vocab.from_dict(ck.vocab), regions


def _read_data(features: Any, ds: Any, vocab: Any, cfg: CaptionConfig, regions: Any, origin: tuple[str, Any] | None
               ) -> tuple[RegionConfig, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], list]:
    """The store's extractor config, the training pairs (with the snippets of `regions`), the dev
    pairs and the dev references. `origin`: the option and region config of the model the run
    continues (--resume or --init), if any."""
    with FeatureStore(features, readonly=True) as store:
        region_cfg = store.config
        if origin is not None:
            require_features(region_cfg, origin[1], features, origin[0])
        to_input = functools.partial(photo_input, cfg=cfg)  # full frame, or all regions for attention
        train = caption_split(store, "train", vocab, cfg.max_len, ds, to_input)
        if regions is not None:
            train = add_snippets(train, store, regions, vocab, cfg.max_len, ds)
        dev_data = caption_split(store, "dev", vocab, cfg.max_len, ds, to_input)
        # The same photos, in the same order, as dev_data's features: references for dev CIDEr.
        dev_refs = [r.sentences for r in ds.split("dev") if r.image_id in store]
    if len(train[1]) == 0:
        raise UsageError(f"{features}: holds none of the {ds.name} training-split photos "
                         f"(extract them with vsa features extract and the same --dataset options)")
    return region_cfg, train, dev_data, dev_refs


def _new_model(cfg: CaptionConfig, vocab: Any, device: torch.device, init_model: Any, init: Any) -> torch.nn.Module:
    """The generator with its starting weights (a resumed run's come later, with its optimizer)."""
    seed_everything(cfg.seed)
    model = caption_model(cfg, len(vocab)).to(device)
    if init_model is not None:
        if vocab.itos[: len(init_model.vocab)] != init_model.vocab.itos:
            raise UsageError(f"--init {init}: the vocabulary given does not extend the model's")
        try:
            checkpoint.load_grown(model, init_model.model.state_dict(), len(init_model.vocab), init,
                                  fresh=NEW_PARAMS if cfg.cell == "attend" else ())
        except ModelError:
            raise UsageError(f"--init {init}: a {init_model.config.cell} model of another shape than --preset/--cell "
                             f"ask for") from None
    return model


def _caption_run(cfg: CaptionConfig, vocab: Any, region_cfg: RegionConfig, model: torch.nn.Module,
                 train: tuple[torch.Tensor, ...], dev_data: tuple[torch.Tensor, ...], dev_refs: list,
                 ck: Checkpoint | None, mp: MixedPrecision) -> CaptionRun:
    """The optimizer (its state and the last weights put back when resuming) and the run around it."""
    device = next(model.parameters()).device
    opt = _caption_optimizer(model, cfg)
    facts = {"train_photos": int(len(train[0])), "train_sentences": int(len(train[1])),
             "dev_photos": int(len(dev_data[0]))}
    run = CaptionRun(cfg, vocab, region_cfg, model, opt, mp, device, train, train[0].to(device), dev_data,
                     dev_refs, TrainState(), facts)
    if ck is not None:
        run.state = resume_state(ck, model, opt, run.score)
        run.facts.update({k: ck.metrics[k] for k in ("init",) if k in ck.metrics})
    else:  # the epoch-0 weights stay the best until an epoch scores better
        best = {"epoch": 0, "dev_ppl": float("inf")}
        run.state = TrainState(best_info=best, best_score=run.score(best), best_weights=cpu_copy(model))
    return run


def _save(run: CaptionRun, out: Path, finished: bool, keep: bool = True) -> None:
    """Write `out`: the best weights so far (float16 when the train state is left out), the run's
    figures, the train state."""
    s, best = run.state, run.state.best_info
    metrics = {"dev_ppl": best["dev_ppl"], "dev_cider": best.get("dev_cider"), "best_epoch": best["epoch"],
               "seconds": round(s.seconds(), 1), **run.facts}
    save_caption(run.model, run.vocab, run.region_cfg, out, metrics=metrics,
                 train_state=s.to_file(run.model, run.opt, finished, keep), state_dict=s.best_weights, half=not keep)
