"""Recall@K and median rank against a naive reference; tie rule: pessimistic (ties count
against the true item)."""

from __future__ import annotations

import statistics

import pytest
import torch

from vsa_search.evaluation.metrics import (
    bootstrap_intervals,
    chance_metrics,
    paper_recall,
    recall_summary,
    retrieval_metrics,
    retrieval_ranks,
)


def naive_ranks(scores, sent_image):
    n, m = len(scores), len(scores[0])
    ann = []
    for i in range(n):
        true = [j for j in range(m) if sent_image[j] == i]
        best = max(scores[i][j] for j in true)
        ann.append(1 + sum(1 for j in range(m) if j not in true and scores[i][j] >= best))
    search = []
    for j in range(m):
        t = sent_image[j]
        search.append(1 + sum(1 for i in range(n) if i != t and scores[i][j] >= scores[t][j]))
    return ann, search


def naive_recall(ranks, k):
    return 100 * sum(r <= k for r in ranks) / len(ranks)


# 3 photos, 2 sentences each; sentence j describes photo sent_image[j]. Ties on purpose.
SCORES = [
    [0.9, 0.1, 0.9, 0.2, 0.0, 0.5],  # photo 0: its sentence 0 ties with sentence 2 (false)
    [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # photo 1: all equal, worst rank under the pessimistic rule
    [0.1, 0.2, 0.4, 0.0, 0.8, 0.7],  # photo 2: ranks its sentences first and second
]
SENT_IMAGE = [0, 0, 1, 1, 2, 2]


def test_ranks_match_naive_reference_with_ties():
    ann, search = retrieval_ranks(torch.tensor(SCORES), torch.tensor(SENT_IMAGE))
    want_ann, want_search = naive_ranks(SCORES, SENT_IMAGE)
    assert ann.tolist() == want_ann == [2, 5, 1]
    assert search.tolist() == want_search
    # sentence 1 (photo 0): 0.1 < 0.3 and 0.2 -> rank 3; sentence 2 (photo 1): 0.9 and 0.4 beat 0.3 -> rank 3
    assert search.tolist()[1:3] == [3, 3]


def test_recall_and_medr_match_naive():
    ann, search = retrieval_ranks(torch.tensor(SCORES), torch.tensor(SENT_IMAGE))
    want_ann, want_search = naive_ranks(SCORES, SENT_IMAGE)
    for ranks, want in ((ann, want_ann), (search, want_search)):
        got = recall_summary(ranks, (1, 2, 5))
        for k in (1, 2, 5):
            assert got[f"R@{k}"] == pytest.approx(naive_recall(want, k))
        assert got["medr"] == pytest.approx(statistics.median(want))


def test_random_matrix_matches_naive_with_many_ties():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (7, 21), generator=g).double()  # 4 values: ties everywhere
    sent_image = torch.arange(21) // 3
    ann, search = retrieval_ranks(scores, sent_image)
    want_ann, want_search = naive_ranks(scores.tolist(), sent_image.tolist())
    assert ann.tolist() == want_ann and search.tolist() == want_search


def test_perfect_and_constant_scores():
    sent_image = torch.arange(10) // 2
    perfect = (sent_image[None, :] == torch.arange(5)[:, None]).double()
    m = retrieval_metrics(perfect, sent_image, (1,), reps=50)
    assert m["image_annotation"]["R@1"] == 100 and m["image_search"]["medr"] == 1
    assert m["image_annotation"]["R@1_ci"] == [100.0, 100.0]
    flat = retrieval_metrics(torch.zeros(5, 10), sent_image, (1,), reps=0)
    assert flat["image_annotation"]["R@1"] == 0 and flat["image_search"]["medr"] == 5


def test_bootstrap_interval_contains_estimate_and_is_deterministic():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(40, 200, generator=g)
    sent_image = torch.arange(200) // 5
    scores[sent_image, torch.arange(200)] += 1.5
    ann, search = retrieval_ranks(scores, sent_image)
    a = bootstrap_intervals(ann, search, sent_image, (1, 10), reps=200, seed=0)
    b = bootstrap_intervals(ann, search, sent_image, (1, 10), reps=200, seed=0)
    assert a == b
    for name, ranks in (("image_annotation", ann), ("image_search", search)):
        est = recall_summary(ranks, (1, 10))
        for key in ("R@1", "R@10", "medr"):
            lo, hi = a[name][key]
            assert lo <= est[key] <= hi and lo < hi or key == "medr"


def test_chance_and_paper_figures():
    c = chance_metrics(125, 5, (1, 10))
    assert c["image_search"]["R@1"] == pytest.approx(100 / 125)
    assert c["image_annotation"]["R@1"] == pytest.approx(100 * 5 / 625)
    assert c["image_search"]["medr"] == 63
    assert paper_recall()["image_annotation"]["R@1"] == 16.5


def test_chance_when_k_covers_every_sentence():
    c = chance_metrics(4, 2, (1, 5, 10))  # 8 sentences: R@10 ranks all of them
    assert c["image_annotation"]["R@10"] == 100.0 and c["image_search"]["R@10"] == 100.0
    assert c["image_annotation"]["R@1"] == pytest.approx(100 * 2 / 8)


def test_nan_scores_rank_last():
    sent_image = torch.arange(4) // 2
    scores = torch.full((2, 4), float("nan"))
    ann, search = retrieval_ranks(scores, sent_image)
    assert ann.tolist() == [3, 3] and search.tolist() == [2, 2, 2, 2]
