"""The paper's retrieval evaluation (`vsa eval recall`): one split's photos and sentences scored
with a model, beside the global baseline, chance and the paper's figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core import paths
from ..core.device import pick_device
from ..core.errors import DatasetError, StoreError, UsageError
from ..data.datasets import load_flickr8k
from ..data.vocab import UNK, pad_ids
from ..models.alignment import LoadedAlign, load_align
from ..models.captioner import LoadedCaptioner, load_caption
from ..models.likelihood import ANNOTATION_WEIGHT, DEPTH, SEARCH_WEIGHT
from ..models.querybank import lse_offsets, photo_bank_scores, sentence_bank_scores
from ..models.score import flat_words, score_words, shared_width, split_words, word_mask
from ..vision.features import FeatureStore, extract_to_cache, require_extractor, same_extractor
from .generative import generator_inputs, generator_terms, pair_count, reranked_metrics
from .metrics import chance_metrics, paper_recall, retrieval_metrics

# Trains a global baseline when none fits: (model, features, dataset) -> (LoadedAlign or None, where it came from).
BaselineTrainer = Callable[[LoadedAlign, Path, Any], tuple[LoadedAlign | None, str]]
# Progress by stage: on_stage(description, total, unit) starts a stage and returns its advance(n).
Advance = Callable[[int], None]
StageFn = Callable[[str, int, str], Advance]


def _no_stage(description: str, total: int, unit: str) -> Advance:
    return lambda n: None


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


def retrieval_data(records: list[Any], store: Any, vocab: Any, on_progress: Advance | None = None) -> RetrievalData:
    """Features of `records`' photos from `store` (a FeatureStore) and their sentences encoded with
    `vocab`. Sentences that tokenize to nothing keep one UNK so that every sentence has a score."""
    if not records:
        raise DatasetError("no photos to evaluate")
    rf = []
    for a in range(0, len(records), 100):
        rf += store.get_many([r.image_id for r in records[a:a + 100]])
        if on_progress:
            on_progress(len(records[a:a + 100]))
    n, r_max, dim = len(rf), max(f.features.shape[0] for f in rf), rf[0].features.shape[1]
    feats = torch.zeros(n, r_max, dim)
    region_mask = torch.zeros(n, r_max, dtype=torch.bool)
    for i, f in enumerate(rf):
        feats[i, : len(f.features)] = torch.from_numpy(f.features)
        region_mask[i, : len(f.features)] = True
    sents = [(i, s) for i, r in enumerate(records) for s in r.sentences]
    encoded = [vocab.encode_text(s) or [UNK] for _, s in sents]
    ids, lengths = pad_ids(encoded)
    return RetrievalData([r.image_id for r in records], feats, region_mask, ids, lengths,
                         torch.tensor([i for i, _ in sents]), [s for _, s in sents])


def split_data(loaded: LoadedAlign, features: Path, ds: Any, split: str,
               on_progress: Advance | None = None) -> RetrievalData:
    """The `split` photos of `ds` that the store `features` (of `loaded`'s extractor) holds, and their sentences:
    what a choice made on dev scores."""
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, loaded.region_config, features, loaded.path)
        recs = [r for r in ds.present(split) if r.image_id in store]
        if not recs:
            raise StoreError(f"{features}: holds none of the {split} photos of {ds.name}")
        return retrieval_data(recs, store, loaded.vocab, on_progress)


@torch.no_grad()
def score_all(model: torch.nn.Module, data: RetrievalData, device: torch.device | str = "cpu",
              chunk: int = 25, on_progress: Advance | None = None) -> torch.Tensor:
    """(N_img, N_sent) scores of every photo against every sentence: every sentence's real words
    in one (W, h) matrix, photos in chunks (score.score_words; a hybrid model's global part
    scored once per photo, not per region)."""
    was_training = model.training
    model.eval()
    try:
        s = model.encode_words(data.ids.to(device), data.lengths.to(device))  # (M, T, h)
        words, sent = flat_words(s, word_mask(data.lengths.to(device), data.ids.shape[1]))
        shared = shared_width(model)
        part, globs = split_words(words, sent, len(s), shared)  # once, not per chunk of photos
        rows = []
        for a in range(0, len(data.image_ids), chunk):
            v = model.encode_regions(data.feats[a : a + chunk].to(device))  # (c, R', h)
            mask = data.region_mask[a : a + chunk, : v.shape[1]].to(device)
            rows.append(score_words(v, mask, part, sent, len(s), shared, globs).cpu())
            if on_progress:
                on_progress(len(v))
        return torch.cat(rows)
    finally:
        model.train(was_training)


def querybank_offsets(loaded: LoadedAlign, data: RetrievalData, device: torch.device | str = "cpu",
                      chunk: int = 25, on_progress: Advance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """((N_img,), (N_sent,)) querybank offsets of the split's photos and sentences (zeros without a bank)."""
    bank = loaded.querybank
    if bank is None:
        return torch.zeros(len(data.image_ids)), torch.zeros(len(data.sent_image))
    photo, sent = querybank_scores(loaded, data, device, chunk, on_progress)
    return lse_offsets(photo, 1, bank.beta, bank.weight), lse_offsets(sent, 0, bank.beta, bank.weight)


@torch.no_grad()
def querybank_scores(loaded: LoadedAlign, data: RetrievalData, device: torch.device | str = "cpu",
                     chunk: int = 25, on_progress: Advance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's scores against its model's bank, from which its offsets come for any β and weight
    (querybank.lse_offsets): the photos' (N_img, bank sentences) and the bank photos' (bank photos, N_sent)."""
    model, bank = loaded.model, loaded.querybank
    was_training = model.training
    model.eval()
    try:
        ids, lengths = data.ids.to(device), data.lengths.to(device)
        sent = sentence_bank_scores(model, bank, model.encode_words(ids, lengths), word_mask(lengths, ids.shape[1]))
        photo = []
        for a in range(0, len(data.image_ids), chunk):
            v = model.encode_regions(data.feats[a : a + chunk].to(device))
            mask = data.region_mask[a : a + chunk, : v.shape[1]].to(device)
            photo.append(photo_bank_scores(model, bank, v, mask).cpu())
            if on_progress:
                on_progress(len(v))
        return torch.cat(photo), sent.cpu()
    finally:
        model.train(was_training)


def normalised_scores(loaded: LoadedAlign, data: RetrievalData, device: torch.device | str, name: str = "",
                      on_stage: StageFn = _no_stage) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(raw scores, querybank-normalised scores or None without a bank), both (N_img, N_sent)."""
    raw = score_all(loaded.model, data, device,
                    on_progress=on_stage(f"scoring {name}", len(data.image_ids), "photos"))
    if loaded.querybank is None:
        return raw, None
    p_off, s_off = querybank_offsets(loaded, data, device,
                                     on_progress=on_stage(f"querybank offsets, {name}", len(data.image_ids), "photos"))
    return raw, raw - p_off[:, None] - s_off[None, :]


def _rows(name: str, loaded: LoadedAlign, data: RetrievalData, device: torch.device | str, ks: tuple[int, ...],
          reps: int, seed: int, on_stage: StageFn = _no_stage) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """(one table row for a model, two for a model with a querybank (the second without it); the scores
    of the first row)."""
    raw, normalised = normalised_scores(loaded, data, device, name, on_stage)
    row = {"name": name, "path": str(loaded.path)}
    if normalised is None:
        return [{**row, "metrics": retrieval_metrics(raw, data.sent_image, ks, reps, seed)}], raw
    return [{**row, "querybank": loaded.querybank.header(),
             "metrics": retrieval_metrics(normalised, data.sent_image, ks, reps, seed)},
            {**row, "name": f"{name}, without querybank normalisation",
             "metrics": retrieval_metrics(raw, data.sent_image, ks, reps, seed)}], normalised


def generator_row(generator: str | Path, features: Path | None, scores: torch.Tensor, data: RetrievalData,
                  ds: Any, split: str, weights: tuple[float, float] | None, ks: tuple[int, ...], reps: int,
                  seed: int, device: torch.device | str, on_stage: StageFn = _no_stage) -> dict[str, Any]:
    """The row of this model's scores re-ranked by the caption generator (evaluation/generative.py); the
    generator reads its own features from the store `features` (default: extracted into the cache)."""
    cap, inputs, prior = generator_data(generator, features, data.image_ids, ds, split, device, on_stage)
    w_ann, w_search = weights or (ANNOTATION_WEIGHT, SEARCH_WEIGHT)
    both = w_search != 0  # the search direction's terms cost the most: only when they count
    terms = generator_terms(cap, inputs, prior, data.sentences, scores, search=both,
                            on_progress=on_stage(f"generator, {Path(cap.path).name}",
                                                 pair_count(scores, len(prior), search=both), "pairs"))
    return {"name": f"this model, re-ranked by the generator {Path(cap.path).name}", "path": str(cap.path),
            "generator": {"depth": DEPTH, "prior_photos": len(prior), "annotation_weight": w_ann,
                          "search_weight": w_search},
            "metrics": reranked_metrics(scores, terms, data.sent_image, ks, w_ann, w_search, reps, seed)}


def generator_data(generator: str | Path, features: Path | None, image_ids: list[str], ds: Any, split: str,
                   device: torch.device | str, on_stage: StageFn = _no_stage
                   ) -> tuple[LoadedCaptioner, torch.Tensor, torch.Tensor]:
    """(the generator, its inputs for `image_ids`, its prior photos' inputs (the model file's))."""
    cap = load_caption(paths.find_model(str(generator)), device)
    prior = cap.require_prior()
    if features is None:
        ids = set(image_ids)
        want = {r.image_id: r.path for r in ds.present(split) if r.image_id in ids}
        features = extract_to_cache(want, cap.region_config, device,
                                    on_stage(f"extracting photos for {Path(cap.path).name}", len(want), "photos"))
    features = Path(features)
    with FeatureStore(features, readonly=True) as store:
        require_extractor(store.config, cap.region_config, features, cap.path)
        missing = [i for i in image_ids if i not in store]
        if missing:
            raise StoreError(f"{features}: holds no features of {missing[0]} (and {len(missing) - 1} more) for "
                             f"the generator")
        return cap, generator_inputs(cap, store, image_ids), prior


def _baseline(model: LoadedAlign, features: Path, baseline: str | None, dataset: Any,
              train_baseline: BaselineTrainer | None) -> tuple[LoadedAlign | None, str]:
    """The global baseline to compare against: an explicit file; else the shipped `align-global`
    when it was trained on the same extractor's features; else what `train_baseline` gives
    (the CLI passes train.baseline's); else none. Returns (LoadedAlign or None, where it came from)."""
    if baseline == "none":
        return None, "not requested"
    if baseline not in (None, "auto"):
        return load_align(paths.find_model(baseline)), str(paths.find_model(baseline))
    shipped = paths.find_model("align-global")
    if shipped.exists():
        b = load_align(shipped)
        if same_extractor(b.region_config, model.region_config):
            return b, f"{shipped} (shipped)"
    if train_baseline is None:
        return None, "none: no shipped global baseline for these features"
    return train_baseline(model, features, dataset)


def _data_for(features: Path, records: list[Any], model: LoadedAlign) -> RetrievalData:
    """The same photos and sentences, encoded with another model's vocabulary."""
    with FeatureStore(features, readonly=True) as store:
        return retrieval_data(records, store, model.vocab)


def evaluate_recall(model_path: str | Path, features: str | Path | None = None, split: str = "test",
                    ks: tuple[int, ...] = (1, 5, 10), baseline: str | None = "auto", dataset: Any = None,
                    device: str | None = None, reps: int = 1000, seed: int = 0,
                    on_extract: Callable[[int], None] | None = None,
                    train_baseline: BaselineTrainer | None = None,
                    also: list[str | Path] | None = None, on_stage: StageFn | None = None,
                    generator: str | Path | None = None, generator_features: str | Path | None = None,
                    generator_weights: tuple[float, float] | None = None) -> dict[str, Any]:
    """The paper's retrieval evaluation on the `split` photos present ("all": every photo of
    `dataset`, default Flickr8k): this model, the models in `also` (an ablation in one table), the
    global baseline, chance and the paper's figures, side by side; 95% bootstrap intervals over
    photos (the same resamples for every row). Without `features`, the split's photos are extracted
    into the cache with the model's region config (on_extract(n) reports progress, or on_stage).
    train_baseline: see `_baseline`. on_stage(description, total, unit) -> advance(n): progress by
    stage, with real totals (extracting, reading features, scoring each model). generator: a caption model
    that re-ranks this model's top candidates (one more row; generator_row), reading its own features from
    `generator_features`; generator_weights: (annotation, search), default models/likelihood.py's."""
    stage = on_stage or _no_stage
    if not ks or any(k < 1 for k in ks):
        raise UsageError("--k needs positive integers, e.g. 1,5,10")
    ks = tuple(sorted(set(ks)))
    dev_ = pick_device(device)
    model = load_align(paths.find_model(str(model_path)), dev_)
    ds = dataset if dataset is not None else load_flickr8k()
    records = ds.present(split)
    if not records:
        hint = " (a data set without splits, such as a COCO captions file, is --split all)" if split != "all" else ""
        raise DatasetError(f"no {split} photos of the {ds.name} data set present on disk{hint}")
    others = [load_align(paths.find_model(str(p)), dev_) for p in also or []]
    if features is None:
        extract = on_extract or stage(f"extracting {split} photos", len(records), "photos")
        features = extract_to_cache({r.image_id: r.path for r in records}, model.region_config, device, extract,
                                    top=model.top)
    features = Path(features)
    with FeatureStore(features, readonly=True) as store:
        for m in (model, *others):
            require_extractor(store.config, m.region_config, features, m.path)
        records = [r for r in records if r.image_id in store]
        if not records:
            raise DatasetError(f"{features}: holds none of the {split} photos")
        data = retrieval_data(records, store, model.vocab, stage("reading features", len(records), "photos"))
    base, base_from = _baseline(model, features, baseline, ds, train_baseline)

    rows, scores = _rows(f"this model: {Path(model.path).name}", model, data, dev_, ks, reps, seed, stage)
    if generator is not None:
        rows.insert(1, generator_row(generator, None if generator_features is None else Path(generator_features),
                                     scores, data, ds, split, generator_weights, ks, reps, seed, dev_, stage))
    for m in others:
        mdata = data if m.vocab.itos == model.vocab.itos else _data_for(features, records, m)
        rows += _rows(Path(m.path).name, m, mdata, dev_, ks, reps, seed, stage)[0]
    if base is not None:
        base.model.to(dev_)
        bdata = data if base.vocab.itos == model.vocab.itos else _data_for(features, records, base)
        rows.append({**_rows("global baseline", base, bdata, dev_, ks, reps, seed, stage)[0][0], "path": base_from})
    per_image = max(1, round(len(data.sent_image) / len(records)))
    rows.append({"name": "chance", "metrics": chance_metrics(len(records), per_image, ks)})
    paper = paper_recall("flickr8k")
    rows.append({"name": "paper (Flickr8k, 1,000 test)",
                 "metrics": {d: {m: paper[d].get(m) for m in [f"R@{k}" for k in ks] + ["medr"]}
                             for d in ("image_annotation", "image_search")}})
    official = len(ds.split(split)) if split in ("train", "dev", "test") else len(ds.records)
    return {"dataset": ds.name, "split": split, "photos": len(records), "sentences": len(data.sent_image),
            "official_photos": official, "ks": list(ks), "features": str(features), "baseline": base_from,
            "note": (f"{ds.name}: the {len(records):,} {split} photos present ({len(data.sent_image):,} sentences) "
                     f"of {official:,}; the paper's figures are on Flickr8k's 1,000 test photos; "
                     f"[lo, hi] = 95% bootstrap interval over photos (seed {seed}); "
                     f"ties count against the true item"),
            "rows": rows}
