"""Training the caption generator (`vsa train caption`) on full-image features and, for the
region generator, on region snippets too; early stopping on dev perplexity or CIDEr."""

from __future__ import annotations

import dataclasses
import time
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
from ..vision.features import FeatureStore, same_extractor
from .common import MixedPrecision, TrainState, cpu_copy, run_epochs, seed_everything


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



def train_caption(features, out, cfg, resume: bool = False, device: str | None = None, root=None,
                  keep_train_state: bool = True, on_batch=None, on_epoch=None, amp: bool | None = None,
                  regions=None, init=None, dataset: Any = None, min_count: int = 5) -> dict:
    """Train the caption generator on the full-image features of the training-split photos in the
    feature store `features`; early stopping on dev perplexity or dev CIDEr (cfg.select, patience cfg.patience).

    `out` is rewritten after every epoch: its weights are the best epoch's; its train_state holds
    the current weights, optimizer and counters so that `resume=True` continues where it stopped
    (keep_train_state=False drops them from the final file: smaller, no longer resumable).
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
        # A resumed region generator keeps its snippets: without them it would go on as another model.
        saved_regions = ck.metrics.get("regions")
        if regions is None and saved_regions:
            regions = saved_regions
        elif regions is not None and Path(saved_regions or "").resolve() != Path(regions).resolve():
            raise UsageError(f"--resume: {out} was trained with --regions {saved_regions or '(none)'}, not {regions}")
    ds = dataset if dataset is not None else load_flickr8k(root)
    init_model = load_caption(init) if init is not None and not resume else None
    if init_model is not None and init_model.config.members > 1:
        raise UsageError(f"--init {init}: an ensemble; start from one of its members")
    vocab = vocab or build_vocab(ds, min_count, base=init_model.vocab if init_model is not None else None)

    with FeatureStore(features, readonly=True) as store:
        region_cfg = store.config
        if resume and not same_extractor(region_cfg, from_dict(RegionConfig, ck.region_config)):
            raise UsageError(f"--resume: {features} holds other features than {out} was trained on")
        if init_model is not None and not same_extractor(region_cfg, init_model.region_config):
            raise UsageError(f"--init {init}: trained on other features than {features} holds")
        train = caption_split(store, "train", vocab, cfg.max_len, ds, lambda f: photo_input(f, cfg))
        if regions is not None:
            train = add_snippets(train, store, regions, vocab, cfg.max_len, ds)
        dev_data = caption_split(store, "dev", vocab, cfg.max_len, ds, lambda f: photo_input(f, cfg))
        # The same photos, in the same order, as dev_data's features: references for dev CIDEr.
        dev_refs = [r.sentences for r in ds.split("dev") if r.image_id in store]
    if len(train[1]) == 0:
        raise UsageError(f"{features}: holds none of the {ds.name} training-split photos "
                         f"(extract them with vsa features extract and the same --dataset options)")
    if cfg.select not in ("ppl", "cider"):
        raise UsageError(f"unknown selection {cfg.select!r}; choose ppl or cider")

    seed_everything(cfg.seed)
    model = make_captioner(cfg, len(vocab)).to(dev)
    if init_model is not None:
        if vocab.itos[: len(init_model.vocab)] != init_model.vocab.itos:
            raise UsageError(f"--init {init}: the vocabulary given does not extend the model's")
        try:
            checkpoint.load_grown(model, init_model.model.state_dict(), len(init_model.vocab), init,
                                  fresh=NEW_PARAMS if cfg.cell == "attend" else ())
        except ModelError:
            raise UsageError(f"--init {init}: a {init_model.config.cell} model of another shape than --preset/--cell "
                             f"ask for") from None
    opt = _caption_optimizer(model, cfg)
    on_dev = len(dev_data[1]) > 0  # a store without dev photos stops on training perplexity
    on_cider = on_dev and cfg.select == "cider"

    def score(best: dict) -> float:
        """Higher is better: dev CIDEr, or minus the (dev, else train) perplexity."""
        return best.get("dev_cider", float("-inf")) if on_cider else -best["dev_ppl"]

    best: dict = {"epoch": 0, "dev_ppl": float("inf")}
    state = TrainState(best_info=best, best_score=score(best), best_weights=cpu_copy(model))
    if resume:
        model.load_state_dict(ts["current"])
        opt.load_state_dict(ts["optimizer"])
        best = dict(ts["best"])
        state = TrainState(epoch=int(ts["epoch"]), best_epoch=int(best["epoch"]), best_score=score(best),
                           bad_epochs=int(ts["bad_epochs"]), history=list(ts["history"]), best_info=best,
                           best_weights=ck.state_dict)
    t_start = time.perf_counter() - float(ts.get("seconds", 0.0))
    feats = train[0].to(dev)

    def one_epoch(epoch: int) -> tuple[dict, float, dict]:
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and order depend on the epoch only: resumable
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        model.train()
        for group in opt.param_groups:  # a function of the epoch alone, so --resume gets the same
            group["lr"] = cfg.lr * cfg.lr_decay ** (epoch - 1)
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
        if on_cider:
            rec["dev_cider"] = dev_cider(model, dev_data[0].to(dev), dev_refs, vocab, cfg.max_len)
        best = {"epoch": epoch, "dev_ppl": ppl, **({"dev_cider": rec["dev_cider"]} if "dev_cider" in rec else {})}
        return rec, score(best), best

    def save(final: bool) -> None:
        # train_state as caption files have always stored it (what --resume reads).
        history, best = state.history, state.best_info
        blob = {"epoch": history[-1]["epoch"] if history else 0, "best": best, "bad_epochs": state.bad_epochs,
                "history": history, "seconds": time.perf_counter() - t_start, "finished": final}
        if keep_train_state or not final:
            blob.update(current=cpu_copy(model), optimizer=opt.state_dict())
        metrics = {"dev_ppl": best["dev_ppl"], "dev_cider": best.get("dev_cider"), "best_epoch": best["epoch"],
                   "train_photos": int(len(train[0])),
                   "train_sentences": int(len(train[1])), "dev_photos": int(len(dev_data[0])),
                   "seconds": round(blob["seconds"], 1), "dataset": ds.name,
                   **({"regions": str(regions)} if regions else {}), **({"init": str(init)} if init else {})}
        slim = final and not keep_train_state
        save_caption(model, vocab, region_cfg, out, metrics=metrics, train_state=blob, state_dict=state.best_weights,
                     half=slim)

    run_epochs(state, cfg.epochs, cfg.patience, model, one_epoch, save, on_epoch=on_epoch)
    stopped = state.bad_epochs >= cfg.patience
    history, best = state.history, state.best_info
    if not keep_train_state and history:  # also slims a finished run given to --resume --slim
        save(final=True)
    return {"out": str(out), "history": history, "best": best, "stopped_early": stopped,
            "seconds": round(time.perf_counter() - t_start, 1), "device": str(dev), "precision": mp.describe(),
            "train_photos": int(len(train[0])), "train_sentences": int(len(train[1])),
            "dev_photos": int(len(dev_data[0]))}
