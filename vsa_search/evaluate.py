"""Evaluation the way the paper measures: retrieval Recall@K and median rank, and caption
metrics (BLEU-1..4, METEOR, CIDEr), each beside baselines and the paper's published figures."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import DatasetError


@cache
def paper_results() -> dict[str, Any]:
    """The paper's published figures, shipped inside the package."""
    return json.loads(resources.files("vsa_search").joinpath("data/paper_results.json").read_text())


# --------------------------------------------------------------------------- retrieval (recall)
# Tie rule (pessimistic): a candidate scoring exactly the same as the true item is ranked above it,
# so a model that scores everything equally gets the worst rank, never a lucky one.


@dataclass
class RetrievalData:
    """One split's photos and sentences as padded tensors, ready for batched scoring.
    feats (N, R, D) float32, region_mask (N, R) bool, ids (M, T) long, lengths (M,) long,
    sent_image (M,) long: the photo (row of feats) each sentence describes."""

    image_ids: list[str]
    feats: torch.Tensor
    region_mask: torch.Tensor
    ids: torch.Tensor
    lengths: torch.Tensor
    sent_image: torch.Tensor
    sentences: list[str]


def retrieval_data(records: list[Any], store: Any, vocab: Any) -> RetrievalData:
    """Features of `records`' photos from `store` (a FeatureStore) and their sentences encoded with
    `vocab`. Sentences that tokenize to nothing keep one UNK so that every sentence has a score."""
    from .vocab import UNK

    if not records:
        raise DatasetError("no photos to evaluate")
    rf = store.get_many([r.image_id for r in records])
    n, r_max, dim = len(rf), max(f.features.shape[0] for f in rf), rf[0].features.shape[1]
    feats = torch.zeros(n, r_max, dim)
    region_mask = torch.zeros(n, r_max, dtype=torch.bool)
    for i, f in enumerate(rf):
        feats[i, : len(f.features)] = torch.from_numpy(f.features)
        region_mask[i, : len(f.features)] = True
    sents = [(i, s) for i, r in enumerate(records) for s in r.sentences]
    encoded = [vocab.encode_text(s) or [UNK] for _, s in sents]
    lengths = torch.tensor([len(e) for e in encoded])
    ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
    for j, e in enumerate(encoded):
        ids[j, : len(e)] = torch.tensor(e)
    return RetrievalData([r.image_id for r in records], feats, region_mask, ids, lengths,
                         torch.tensor([i for i, _ in sents]), [s for _, s in sents])


@torch.no_grad()
def score_all(model: torch.nn.Module, data: RetrievalData, device: torch.device | str = "cpu",
              chunk: int = 25) -> torch.Tensor:
    """(N_img, N_sent) scores of every photo against every sentence, in batched tensor ops
    (photos in chunks so that the (chunk, M, T, R) dot tensor stays small)."""
    from .embedding import score

    was_training = model.training
    model.eval()
    try:
        s = model.encode_words(data.ids.to(device), data.lengths.to(device))  # (M, T, h)
        word_mask = (torch.arange(data.ids.shape[1], device=device)[None, :]
                     < data.lengths.to(device)[:, None])
        rows = []
        for a in range(0, len(data.image_ids), chunk):
            v = model.encode_regions(data.feats[a : a + chunk].to(device))  # (c, R', h)
            rows.append(score(v, data.region_mask[a : a + chunk, : v.shape[1]].to(device), s, word_mask).cpu())
        return torch.cat(rows)
    finally:
        model.train(was_training)


def retrieval_ranks(scores: torch.Tensor, sent_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks (1 = top) under the pessimistic tie rule.
    scores (N, M), sent_image (M,) -> annotation ranks (N,): for each photo, the rank of its
    best-ranked true sentence among all M; search ranks (M,): each sentence's photo among all N."""
    n, m = scores.shape
    scores = scores.nan_to_num(nan=float("-inf"))  # a NaN score ties at the bottom, never wins
    truth = sent_image[None, :] == torch.arange(n)[:, None]  # (N, M)
    best_true = scores.masked_fill(~truth, float("-inf")).max(dim=1).values  # (N,)
    # The best true sentence is outranked only by false ones; ties count against it.
    ann = 1 + ((scores >= best_true[:, None]) & ~truth).sum(1)
    true_score = scores[sent_image, torch.arange(m)]  # (M,)
    search = 1 + ((scores >= true_score[None, :]) & ~truth).sum(0)
    return ann, search


def recall_summary(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """{"R@K": percent of queries whose true item ranks <= K, ..., "medr": median rank}."""
    r = ranks.double()
    out = {f"R@{k}": float((r <= k).double().mean() * 100) for k in ks}
    out["medr"] = float(r.median()) if len(r) % 2 else float(r.quantile(0.5))
    return out


def bootstrap_intervals(ann: torch.Tensor, search: torch.Tensor, sent_image: torch.Tensor, ks: tuple[int, ...],
                        reps: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, list[float]]]:
    """Percentile intervals from resampling the test photos with replacement (a photo brings its
    sentences along); ranks are not recomputed, so the candidate pool stays the full split."""
    n = len(ann)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, n, (reps, n), generator=g)  # (reps, N)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    per_photo = [search[sent_image == i] for i in range(n)]
    counts = torch.tensor([len(p) for p in per_photo])
    out: dict[str, dict[str, list[float]]] = {}
    for name in ("image_annotation", "image_search"):
        rows = {}
        if name == "image_annotation":
            samples = ann[pick].double()  # (reps, N)
            weights = torch.ones_like(samples)
        else:
            width = int(counts.max())
            padded = torch.full((n, width), float("nan"), dtype=torch.float64)
            for i, p in enumerate(per_photo):
                padded[i, : len(p)] = p.double()
            samples = padded[pick].reshape(reps, -1)  # (reps, N * width), NaN = no sentence
            weights = (~samples.isnan()).double()
        for k in ks:
            hit = ((samples <= k).double() * weights).sum(1) / weights.sum(1) * 100
            rows[f"R@{k}"] = [float(hit.quantile(lo)), float(hit.quantile(hi))]
        med = samples.nanquantile(0.5, dim=1)
        rows["medr"] = [float(med.quantile(lo)), float(med.quantile(hi))]
        out[name] = rows
    return out


def retrieval_metrics(scores: torch.Tensor, sent_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall@K and median rank in both directions, each with a 95% bootstrap interval (`<metric>_ci`)."""
    ann, search = retrieval_ranks(scores, sent_image)
    ci = bootstrap_intervals(ann, search, sent_image, ks, reps=reps, seed=seed) if reps > 0 else {}
    out: dict[str, Any] = {}
    for name, ranks in (("image_annotation", ann), ("image_search", search)):
        summ = recall_summary(ranks, ks)
        out[name] = {**summ, **{f"{m}_ci": ci[name][m] for m in summ if ci}}
    return out


def mean_recall(metrics: dict[str, Any], ks: tuple[int, ...] = (1, 5, 10)) -> float:
    """One number for early stopping: the mean of R@K over both directions."""
    vals = [metrics[d][f"R@{k}"] for d in ("image_annotation", "image_search") for k in ks]
    return sum(vals) / len(vals)


def chance_metrics(n_images: int, sents_per_image: int, ks: tuple[int, ...]) -> dict[str, Any]:
    """What a random ranking scores: search K/N; annotation, P(one of the photo's sentences in the
    top K of N·s) = 1 - C(N·s - s, K) / C(N·s, K); medians of the same distributions."""
    m = n_images * sents_per_image

    def p_ann(k: int) -> float:  # P(best true rank <= k)
        return 1 - math.comb(m - sents_per_image, k) / math.comb(m, k)

    ann = {f"R@{k}": 100 * p_ann(k) for k in ks}
    ann["medr"] = float(next(k for k in range(1, m + 1) if p_ann(k) >= 0.5))
    search = {f"R@{k}": 100 * min(k, n_images) / n_images for k in ks}
    search["medr"] = (n_images + 1) / 2
    return {"image_annotation": ann, "image_search": search}


def paper_recall(dataset: str = "flickr8k") -> dict[str, Any]:
    """The paper's retrieval figures for `dataset` (1,000 test images for Flickr8k)."""
    return paper_results()["retrieval"][dataset]


def cached_features(records: list[Any], region_cfg: Any, device: str | None,
                    on_progress: Callable[[int], None] | None) -> Path:
    """Extract `records`' photos into the one evaluation cache per extractor,
    paths.cache_dir()/features/<extractor id>; photos already there are not extracted again, so
    `eval recall` and `eval caption` share what either has extracted."""
    from . import paths
    from .features import extract_to_store

    store = paths.cache_dir() / "features" / region_cfg.extractor_id()
    extract_to_store({r.image_id: r.path for r in records}, store, region_cfg, device=device,
                     on_progress=on_progress)
    return store


def _baseline(model: Any, features: Path, baseline: str | None, dataset: Any, device: str | None,
              on_baseline: Callable[[str], None] | None) -> tuple[Any, str]:
    """The global baseline to compare against: an explicit file; else the shipped `align-global`
    when it was trained on the same extractor's features; else one trained now on `features`
    (cached under paths.cache_dir()); else none. Returns (LoadedAlign or None, where it came from)."""
    import hashlib

    from . import paths
    from .config import EMBED_PRESETS, to_dict
    from .embedding import load_align
    from .features import FeatureStore
    from .train import train_embed

    if baseline == "none":
        return None, "not requested"
    if baseline not in (None, "auto"):
        return load_align(paths.find_model(baseline)), str(paths.find_model(baseline))
    shipped = paths.find_model("align-global")
    if shipped.exists():
        b = load_align(shipped)
        if to_dict(b.region_config) == to_dict(model.region_config):
            return b, f"{shipped} (shipped)"
    cfg = EMBED_PRESETS["global"]
    with FeatureStore(features, readonly=True) as store:
        n_train = sum(r.image_id in store for r in dataset.present("train"))
    if n_train == 0:
        return None, f"none: {features} holds no train photos to train one on (pass --features)"
    blob = json.dumps({"cfg": to_dict(cfg), "extractor": model.region_config.extractor_id(),
                       "vocab": model.vocab.itos, "train": n_train}, sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:12]
    cached = paths.cache_dir() / f"baseline-{key}.pt"
    if not cached.exists():
        if on_baseline:
            on_baseline(f"training the global baseline on {n_train} train photos (cached in {cached})")
        train_embed(features, cached, cfg, vocab=model.vocab, dataset=dataset, device=device)
    return load_align(cached), f"{cached} (trained on {n_train} train photos of {features})"


def evaluate_recall(model_path: str | Path, features: str | Path | None = None, split: str = "test",
                    ks: tuple[int, ...] = (1, 5, 10), baseline: str | None = "auto", dataset: Any = None,
                    device: str | None = None, reps: int = 1000, seed: int = 0,
                    on_extract: Callable[[int], None] | None = None,
                    on_baseline: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The paper's retrieval evaluation on the `split` photos present: this model, the global
    baseline, chance and the paper's figures, side by side; 95% bootstrap intervals over photos.
    Without `features`, the split's photos are extracted into the cache with the model's region
    config (on_extract(n) reports progress)."""
    from . import paths
    from .config import to_dict
    from .datasets import load_flickr8k
    from .embedding import load_align
    from .errors import StoreError, UsageError
    from .features import FeatureStore
    from .train import pick_device

    if not ks or any(k < 1 for k in ks):
        raise UsageError("--k needs positive integers, e.g. 1,5,10")
    ks = tuple(sorted(set(ks)))
    dev_ = pick_device(device)
    model = load_align(paths.find_model(str(model_path)), dev_)
    ds = dataset if dataset is not None else load_flickr8k()
    records = ds.present(split)
    if not records:
        raise DatasetError(f"no {split} photos present on disk")
    if features is None:
        features = cached_features(records, model.region_config, device, on_extract)
    features = Path(features)
    with FeatureStore(features, readonly=True) as store:
        if to_dict(store.config) != to_dict(model.region_config):
            raise StoreError(f"{features}: features by {store.extractor_id}, but the model was trained on "
                             f"{model.region_config.extractor_id()}; extract with the model's region preset")
        records = [r for r in records if r.image_id in store]
        if not records:
            raise DatasetError(f"{features}: holds none of the {split} photos")
        data = retrieval_data(records, store, model.vocab)
    base, base_from = _baseline(model, features, baseline, ds, device, on_baseline)

    rows: list[dict[str, Any]] = [{"name": f"this model: {Path(model.path).name}", "path": str(model.path),
                                   "metrics": retrieval_metrics(score_all(model.model, data, dev_),
                                                                data.sent_image, ks, reps, seed)}]
    if base is not None:
        base.model.to(dev_)
        if base.vocab.itos != model.vocab.itos:
            with FeatureStore(features, readonly=True) as store:
                bdata = retrieval_data(records, store, base.vocab)
        else:
            bdata = data
        rows.append({"name": "global baseline", "path": base_from,
                     "metrics": retrieval_metrics(score_all(base.model, bdata, dev_), bdata.sent_image, ks,
                                                  reps, seed)})
    per_image = max(1, round(len(data.sent_image) / len(records)))
    rows.append({"name": "chance", "metrics": chance_metrics(len(records), per_image, ks)})
    paper = paper_recall("flickr8k")
    rows.append({"name": "paper (Flickr8k, 1,000 test)",
                 "metrics": {d: {m: paper[d].get(m) for m in [f"R@{k}" for k in ks] + ["medr"]}
                             for d in ("image_annotation", "image_search")}})
    official = len(ds.split(split)) if split in ("train", "dev", "test") else len(records)
    return {"split": split, "photos": len(records), "sentences": len(data.sent_image), "official_photos": official,
            "ks": list(ks), "features": str(features), "baseline": base_from,
            "note": (f"on the {len(records)} {split} photos present ({len(data.sent_image)} sentences) of the "
                     f"official {official:,}; the paper's figures are on 1,000 test images, so its ranks are "
                     f"over 8x more candidates; [lo, hi] = 95% bootstrap interval over photos "
                     f"(seed {seed}); ties count against the true item"),
            "rows": rows}


# --------------------------------------------------------------------------- captions
# Sentences are tokenised with our own text.tokenize (lowercase alphanumerics, as the model sees
# them) instead of the PTB Java tokenizer; scores are x100 like the paper's tables.

METEOR_TIMEOUT_S = 300.0


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str | None]:
    """METEOR through pycocoevalcap's Java jar, or (None, why) when Java is missing or fails:
    a metric that cannot run is reported as unavailable, never a crash or a hang."""
    import threading

    try:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
    except Exception as e:  # no java, no jar: Popen raises OSError and friends
        return None, f"METEOR unavailable ({type(e).__name__}: {str(e)[:100]})"
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["score"] = m.compute_score(gts, res)[0]
        except Exception as e:  # Java died mid-way: its pipe gives '' and float('') fails
            box["error"] = f"{type(e).__name__}: {str(e)[:100]}"

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(METEOR_TIMEOUT_S)
    if t.is_alive() or "error" in box:
        m.meteor_p.kill()  # unblocks the reader; the wrapper's lock is then released
        t.join(5)
        why = box.get("error", f"timed out after {METEOR_TIMEOUT_S:.0f} s")
        return None, f"METEOR unavailable ({why})"
    return float(box["score"]), None


def caption_metrics(references: dict[str, list[str]], candidates: dict[str, str],
                    meteor: bool = True) -> dict[str, Any]:
    """BLEU-1..4, METEOR and CIDEr (x100) of one candidate per photo against its references.
    METEOR is None (with "notes") when Java cannot run it."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from .text import tokenize

    if set(references) != set(candidates) or not candidates:
        raise DatasetError("caption metrics need one candidate for every photo with references")
    gts = {k: [" ".join(tokenize(s)) for s in v] for k, v in references.items()}
    res = {k: [" ".join(tokenize(candidates[k]))] for k in gts}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out: dict[str, Any] = {f"BLEU-{n + 1}": 100 * float(b) for n, b in enumerate(bleu)}
    out["METEOR"], why = _meteor(gts, res) if meteor else (None, "METEOR not run")
    if out["METEOR"] is not None:
        out["METEOR"] *= 100
    out["CIDEr"] = 100 * float(cider)
    if why:
        out["notes"] = why
    return out


def nearest_neighbour(train_feats: torch.Tensor, test_feats: torch.Tensor) -> torch.Tensor:
    """The paper's baseline: for each test photo, the training photo closest in full-image
    feature space (cosine). (N, D), (M, D) -> (M,) indices into train_feats."""
    import torch.nn.functional as F

    sims = F.normalize(test_feats.float(), dim=-1) @ F.normalize(train_feats.float(), dim=-1).T  # (M, N)
    return sims.argmax(dim=1)


def generate_captions(loaded: Any, feats: torch.Tensor, beam: int = 7, max_len: int | None = None,
                      length_norm: float = 0.0, batch_size: int = 64,
                      on_progress: Callable[[int], None] | None = None) -> list[Any]:
    """Beam-search captions for (N, D) full-image features, in batches; returns beam.Caption objects."""
    from .beam import beam_search

    device = next(loaded.model.parameters()).device
    out = []
    for i in range(0, len(feats), batch_size):
        chunk = feats[i:i + batch_size].to(device)
        out += beam_search(loaded.model, chunk, beam=beam, max_len=max_len or loaded.config.max_len,
                           length_norm=length_norm)
        if on_progress:
            on_progress(len(chunk))
    return out


def evaluate_captions(model: str | Path, features: str | Path | None = None, beam: int = 7,
                      length_norm: float = 0.0, device: str | None = None, root: Path | None = None,
                      meteor: bool = True, on_extract: Callable[[int], None] | None = None,
                      on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The paper's caption table for the Flickr8k test photos present, in one run: this model,
    the nearest-neighbour baseline (the first reference sentence of the closest training photo,
    cosine on full-image features) and the paper's published figures.

    Features come from the store `features` (it must be made with the model's region config) or,
    when None, are extracted once into cached_features() (test photos and, for the baseline,
    training photos)."""
    from .captioner import full_image, load_caption
    from .datasets import load_flickr8k
    from .errors import StoreError
    from .features import FeatureStore
    from .train import pick_device

    loaded = load_caption(model, device=pick_device(device))
    ds = load_flickr8k(root)
    test, train = ds.present("test"), ds.present("train")
    if not test:
        raise DatasetError("no Flickr8k test photos on disk")
    if features is None:
        features = cached_features(test + train, loaded.region_config, device, on_extract)
    with FeatureStore(features, readonly=True) as store:
        if store.extractor_id != loaded.region_config.extractor_id():
            raise StoreError(f"{features}: made by extractor {store.extractor_id}, but the model was trained on "
                             f"{loaded.region_config.extractor_id()} features")
        test = [r for r in test if r.image_id in store]
        train = [r for r in train if r.image_id in store]
        if not test or not train:
            raise StoreError(f"{features}: holds {len(test)} test and {len(train)} training photos; need both")
        test_feats = torch.stack([full_image(store.get(r.image_id)) for r in test])  # (M, D)
        train_feats = torch.stack([full_image(store.get(r.image_id)) for r in train])  # (N, D)

    caps = generate_captions(loaded, test_feats, beam=beam, length_norm=length_norm, on_progress=on_progress)
    model_text = {r.image_id: " ".join(loaded.vocab.decode(c.tokens)) for r, c in zip(test, caps)}
    nn_idx = nearest_neighbour(train_feats, test_feats).tolist()
    nn_text = {r.image_id: train[j].sentences[0] for r, j in zip(test, nn_idx)}
    refs = {r.image_id: list(r.sentences) for r in test}

    paper = paper_results()["generation"]["flickr8k"]
    rows = {
        "this model": caption_metrics(refs, model_text, meteor=meteor),
        "nearest neighbour": caption_metrics(refs, nn_text, meteor=meteor),
        "paper (1,000 test images)": {k: paper.get(k) for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4",
                                                                  "METEOR", "CIDEr")},
    }
    return {
        "model": str(loaded.path), "cell": loaded.config.cell, "beam": beam, "length_norm": length_norm,
        "features": str(features), "test_photos": len(test), "train_photos_for_nn": len(train),
        "rows": rows,
        "note": "this model and the baseline: the Flickr8k test photos present here; the paper: all 1,000 "
                "test images (its Flickr8k figures are unconfirmed, see paper_results.json)",
        "captions": [{"image": r.image_id, "model": model_text[r.image_id], "logprob": round(c.logprob, 3),
                      "nearest_neighbour": nn_text[r.image_id]} for r, c in zip(test, caps)],
    }
