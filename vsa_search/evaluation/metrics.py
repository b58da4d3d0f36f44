"""Evaluation metrics the way the paper measures: retrieval Recall@K and median rank (with
bootstrap intervals, chance), caption metrics (BLEU-1..4, METEOR, CIDEr), and the paper's
published figures to print beside them."""

from __future__ import annotations

import json
import math
import threading
from functools import cache
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor

from ..core.errors import DatasetError
from ..data.text import tokenize


@cache
def paper_results() -> dict[str, Any]:
    """The paper's published figures, shipped inside the package."""
    return json.loads(resources.files("vsa_search").joinpath("data/paper_results.json").read_text())


# --------------------------------------------------------------------------- retrieval (recall)
# Tie rule (pessimistic): a candidate scoring exactly the same as the true item is ranked above it,
# so a model that scores everything equally gets the worst rank, never a lucky one.


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


def direction_mean(metrics: dict[str, Any], direction: str) -> float:
    """The mean of every R@K one direction of `metrics` (retrieval_metrics) holds."""
    vals = [v for k, v in metrics[direction].items() if k.startswith("R@") and not k.endswith("_ci")]
    return sum(vals) / len(vals)


def chance_metrics(n_images: int, sents_per_image: int, ks: tuple[int, ...]) -> dict[str, Any]:
    """What a random ranking scores: search K/N; annotation, P(one of the photo's sentences in the
    top K of N·s) = 1 - C(N·s - s, K) / C(N·s, K); medians of the same distributions."""
    m = n_images * sents_per_image

    def p_ann(k: int) -> float:  # P(best true rank <= k); certain once K covers every sentence
        return 1.0 if k >= m else 1 - math.comb(m - sents_per_image, k) / math.comb(m, k)

    ann = {f"R@{k}": 100 * p_ann(k) for k in ks}
    ann["medr"] = float(next(k for k in range(1, m + 1) if p_ann(k) >= 0.5))
    search = {f"R@{k}": 100 * min(k, n_images) / n_images for k in ks}
    search["medr"] = (n_images + 1) / 2
    return {"image_annotation": ann, "image_search": search}


def paper_recall(dataset: str = "flickr8k") -> dict[str, Any]:
    """The paper's retrieval figures for `dataset` (1,000 test images for Flickr8k)."""
    return paper_results()["retrieval"][dataset]


# --------------------------------------------------------------------------- captions
# Sentences are tokenised with our own text.tokenize (lowercase alphanumerics, as the model sees
# them) instead of the PTB Java tokenizer; scores are x100 like the paper's tables.

METEOR_TIMEOUT_S = 300.0


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str | None]:
    """METEOR through pycocoevalcap's Java jar, or (None, why) when Java is missing or fails:
    a metric that cannot run is reported as unavailable, never a crash or a hang."""
    try:
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
                    meteor: bool = True, reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """BLEU-1..4, METEOR and CIDEr (x100) of one candidate per photo against its references, and
    "CIDEr_ci", a 95% bootstrap interval over photos (CIDEr is a mean of per-photo scores; the
    document frequencies stay those of the whole set). METEOR is None (with "notes") when Java
    cannot run it."""
    if set(references) != set(candidates) or not candidates:
        raise DatasetError("caption metrics need one candidate for every photo with references")
    gts = {k: [" ".join(tokenize(s)) for s in v] for k, v in references.items()}
    res = {k: [" ".join(tokenize(candidates[k]))] for k in gts}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_photo = Cider().compute_score(gts, res)
    out: dict[str, Any] = {f"BLEU-{n + 1}": 100 * float(b) for n, b in enumerate(bleu)}
    out["METEOR"], why = _meteor(gts, res) if meteor else (None, "METEOR not run")
    if out["METEOR"] is not None:
        out["METEOR"] *= 100
    out["CIDEr"] = 100 * float(cider)
    if reps > 0:
        s = torch.as_tensor(per_photo, dtype=torch.float64)
        g = torch.Generator().manual_seed(seed)
        means = s[torch.randint(0, len(s), (reps, len(s)), generator=g)].mean(1) * 100
        out["CIDEr_ci"] = [float(means.quantile(0.025)), float(means.quantile(0.975))]
    if why:
        out["notes"] = why
    return out


def nearest_neighbour(train_feats: torch.Tensor, test_feats: torch.Tensor) -> torch.Tensor:
    """The paper's baseline: for each test photo, the training photo closest in full-image
    feature space (cosine). (N, D), (M, D) -> (M,) indices into train_feats."""
    sims = F.normalize(test_feats.float(), dim=-1) @ F.normalize(train_feats.float(), dim=-1).T  # (M, N)
    return sims.argmax(dim=1)

