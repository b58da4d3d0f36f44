"""Region concepts (the backbone's own ImageNet head) and the word <-> class bridge, on hand-made
probabilities and on real features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsa_search.bridge import scores as BS
from vsa_search.bridge import words as BW
from vsa_search.vision import concepts as C
from vsa_search.vision.features import FeatureStore
from vsa_search.vision.regions import RegionFeatures

PIZZA, TEDDY, TABBY, BROWN_BEAR = 963, 850, 281, 294


def hand_made(rows: list[dict[int, float]], k: int = 4) -> C.Concepts:
    """Regions with the given class probabilities (the rest of each region's top k: class 0, p 0)."""
    ids = np.zeros((len(rows), k), np.uint16)
    probs = np.zeros((len(rows), k), np.float16)
    for r, row in enumerate(rows):
        for j, (c, p) in enumerate(sorted(row.items(), key=lambda kv: -kv[1])):
            ids[r, j], probs[r, j] = c, p
    return C.Concepts(ids, probs)


def test_class_names_come_from_timm_offline() -> None:
    names = BW.class_names()
    assert len(names) == 1000
    assert names[TEDDY] == ("teddy", "teddy bear") and names[PIZZA][0] == "pizza"
    assert BW.display_name(TEDDY) == "teddy bear" and BW.display_name(TABBY) == "tabby cat"


def test_known_class_word_finds_the_region_where_it_is_most_probable() -> None:
    con = hand_made([{TABBY: 0.7, PIZZA: 0.1}, {PIZZA: 0.3, TEDDY: 0.6}, {PIZZA: 0.9}, {TEDDY: 0.2, BROWN_BEAR: 0.1}])
    b = BS.bridge_scores(BW.word_weights(["pizza", "teddy", "cat", "the"]), con)  # (4 words, 4 regions)
    assert b.shape == (4, 4)
    assert b[0].argmax() == 2 and b[0, 2] == pytest.approx(0.9, abs=1e-3)  # an exact name counts fully
    assert b[1].argmax() == 1
    assert b[2].argmax() == 0  # "cat" reaches "tabby, tabby cat" through its head word
    assert not b[3].any()  # function words never bridge
    # The many-region form agrees with the per-photo one.
    many = BS.bridge_scores_many(BW.word_weights(["pizza", "teddy", "cat", "the"]), con.ids, con.probs)
    np.testing.assert_allclose(many, b, rtol=1e-6)


def test_similarity_exact_name_beats_head_word_beats_neighbours() -> None:
    sim = BW.word_class_sim(["bear", "teddy", "qqzxv"])
    assert sim[1, TEDDY] == 1.0
    assert sim[0, BROWN_BEAR] == pytest.approx(BW.HEAD_MATCH)  # "brown bear"
    assert sim[0, TEDDY] == pytest.approx(BW.HEAD_MATCH)  # "teddy bear"
    assert not sim[2].any()  # unknown to GloVe: no similarity at all
    w = BW.word_weights(["bear"])[0]
    assert w[BROWN_BEAR] > 0.5 and w[PIZZA] == 0.0  # sharpened: unrelated classes give nothing


def test_topk_storage_round_trip_and_size() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(1000) * 0.05, size=20).astype(np.float32)
    ids, p = C.topk(probs, 10)
    assert ids.dtype == np.uint16 and p.dtype == np.float16 and ids.shape == (20, 10)
    assert (np.diff(p.astype(np.float32), axis=1) <= 0).all()  # most probable first
    np.testing.assert_array_equal(ids[:, 0], probs.argmax(1))
    con = C.Concepts(ids, p)
    blob = con.to_bytes()
    assert len(blob) == C.topk_bytes(20, 10) == 4 + 40 * 20
    back = C.Concepts.from_bytes(blob)
    np.testing.assert_array_equal(back.ids, ids)
    np.testing.assert_array_equal(back.probs, p)


def test_region_probs_are_the_backbones_own_classifier(tiny_region_encoder) -> None:
    model = tiny_region_encoder.model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fmap = model.forward_features(x)
        want = torch.softmax(model.forward_head(fmap), -1).numpy()
        pooled = fmap.mean(dim=(2, 3)).numpy()
    got = C.region_probs(pooled, tiny_region_encoder.cfg.backbone)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_feature_store_keeps_concepts_and_derives_them_for_older_stores(tmp_path, tiny_region_encoder) -> None:
    rng = np.random.default_rng(1)
    feats = np.abs(rng.normal(size=(3, 1280))).astype(np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 5, 5], [5, 5, 10, 10]], np.int32)
    with FeatureStore(tmp_path / "s", tiny_region_encoder.cfg) as store:
        store.put([("p.jpg", RegionFeatures(boxes, feats))])
        stored = store.concepts("p.jpg")
        assert stored.ids.shape == (3, C.TOP_K)
        want = C.from_features(feats)
        np.testing.assert_array_equal(stored.ids, want.ids)
        with store.kv.batch() as b:  # a store written before concepts existed
            b.delete("c/p.jpg")
        derived = store.concepts("p.jpg")
    # Derived from the stored float16 features: the same top classes.
    np.testing.assert_array_equal(derived.ids[:, 0], stored.ids[:, 0])


def test_photo_concepts_lists_each_class_once_with_its_best_region() -> None:
    con = hand_made([{TABBY: 0.5}, {TABBY: 0.8, PIZZA: 0.1}])
    top = BS.photo_concepts(con, np.array([[0, 0, 9, 9], [1, 1, 5, 5]]), top=2)
    assert [t["name"] for t in top] == ["tabby cat", "pizza pie"]
    assert top[0]["region"] == 1 and top[0]["box"] == [1, 1, 5, 5] and top[0]["prob"] == pytest.approx(0.8, abs=1e-3)
