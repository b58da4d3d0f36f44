from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.align import aligner, mrf, snippets
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import ModelError, StoreError, UsageError
from vsa_search.data.datasets import Record
from vsa_search.data.text import tokenize
from vsa_search.models import encode
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.vision import images
from vsa_search.vision.features import FeatureStore, extract_to_store
from vsa_search.vision.regions import RegionFeatures

TINY = REGION_PRESETS["tiny"]


def brute_force(unary: np.ndarray, beta: float) -> float:
    n, r = unary.shape
    return max(mrf.energy(unary, np.array(a), beta) for a in itertools.product(range(r), repeat=n))


# --------------------------------------------------------------------------- the DP


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, r = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    unary = rng.normal(size=(n, r))
    beta = float(rng.choice([0.0, 0.3, 1.0, 3.0]))
    a = mrf.align_words(unary, beta)
    assert a.shape == (n,) and a.min() >= 0 and a.max() < r
    assert mrf.energy(unary, a, beta) == pytest.approx(brute_force(unary, beta), abs=1e-12)


def test_dp_returns_the_unique_optimum() -> None:
    # Continuous random unaries have one optimum: the DP must return that very assignment.
    rng = np.random.default_rng(7)
    for _ in range(20):
        unary = rng.normal(size=(5, 3))
        best = max(itertools.product(range(3), repeat=5), key=lambda a: mrf.energy(unary, np.array(a), 0.8))
        assert tuple(mrf.align_words(unary, 0.8)) == best


def test_beta_zero_is_per_word_argmax() -> None:
    unary = np.random.default_rng(1).normal(size=(30, 20))
    assert np.array_equal(mrf.align_words(unary, 0.0), unary.argmax(1))


def test_large_beta_puts_all_words_on_one_region() -> None:
    unary = np.random.default_rng(2).normal(size=(12, 20))
    a = mrf.align_words(unary, 1e6)
    assert len(set(a.tolist())) == 1
    assert a[0] == unary.sum(0).argmax()  # ...the region with the best total


def test_beta_smooths_monotonically() -> None:
    unary = np.random.default_rng(3).normal(size=(15, 10))
    runs = [len(mrf.fragments(["w"] * 15, mrf.align_words(unary, b), np.zeros((10, 4)), unary))
            for b in (0.0, 0.5, 1.0, 2.0, 5.0, 50.0)]
    assert runs == sorted(runs, reverse=True) and runs[0] > runs[-1] == 1


def test_torch_input_and_masked_regions() -> None:
    unary = torch.randn(6, 4)
    unary[:, 2] = float("-inf")  # a padded region is never chosen
    a = mrf.align_words(unary, 0.5)
    assert 2 not in a.tolist()
    assert np.array_equal(a, mrf.align_words(unary.numpy(), 0.5))


def test_empty_sentence_and_bad_beta() -> None:
    assert mrf.align_words(np.zeros((0, 3)), 1.0).shape == (0,)
    with pytest.raises(UsageError):
        mrf.align_words(np.zeros((2, 3)), -1.0)
    with pytest.raises(UsageError):
        mrf.check_beta(float("nan"))
    with pytest.raises(UsageError):
        aligner.sentence_tokens("  ... !! ")


def test_fragments_group_runs_and_cover_the_sentence() -> None:
    tokens = "a dog runs on the grass".split()
    a = np.array([1, 1, 0, 0, 2, 2])
    unary = np.arange(18, dtype=float).reshape(6, 3)
    boxes = np.array([[0, 0, 100, 80], [10, 10, 50, 50], [0, 40, 100, 80]])
    frags = mrf.fragments(tokens, a, boxes, unary)
    assert [f.text for f in frags] == ["a dog", "runs on", "the grass"]
    assert [(f.start, f.end, f.region) for f in frags] == [(0, 2, 1), (2, 4, 0), (4, 6, 2)]
    assert frags[0].box == (10, 10, 50, 50)
    assert frags[0].score == pytest.approx((1 + 4) / 2)  # mean of unary[0:2, 1]
    assert json.loads(json.dumps(frags[2].to_dict()))["box"] == [0, 40, 100, 80]


# --------------------------------------------------------------------------- with a (tiny, untrained) model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, caption_vocab) -> Path:
    torch.manual_seed(0)
    vocab = caption_vocab
    model = AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval()
    return save_align(model, vocab, TINY, tmp_path_factory.mktemp("model") / "align.pt")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> Path:
    out = tmp_path_factory.mktemp("feats") / "store"
    extract_to_store({p.name: p for p in sample_photos[:4]}, out, TINY, encoder=tiny_region_encoder)
    return out


def test_align_photo_on_a_real_photo(tiny_model: Path, sample_photos: list[Path], tiny_region_encoder) -> None:
    loaded = load_align(tiny_model)
    im = images.load(sample_photos[0])
    res = aligner.align_photo(loaded, im, "A dog runs through the tall green grass.", beta=0.5,
                            encoder=tiny_region_encoder)
    assert res.tokens == "a dog runs through the tall green grass".split()
    assert " ".join(f.text for f in res.fragments) == " ".join(res.tokens)
    assert res.unary.shape == (8, len(res.boxes))
    # The same alignment from precomputed features (what the feature store or an index holds).
    again = aligner.align_photo(loaded, RegionFeatures(res.boxes, tiny_region_encoder.encode([im], [res.boxes])[0]),
                              res.sentence, beta=0.5)
    assert np.array_equal(again.assignment, res.assignment)
    assert mrf.energy(res.unary, res.assignment, 0.5) >= mrf.energy(res.unary, res.unary.argmax(1), 0.5)
    pic = aligner.draw_alignment(im, res)
    assert min(pic.size) >= 480 and pic.size != im.size  # small photos are enlarged for legible labels


def test_unary_does_not_depend_on_mean_pooling(tiny_model: Path, tiny_store: Path) -> None:
    import dataclasses

    loaded = load_align(tiny_model)
    with FeatureStore(tiny_store, readonly=True) as fs:
        rf = fs.get(fs.ids()[0])
    tokens = [["a", "dog", "runs"], ["two", "men", "play", "football", "on", "the", "beach"]]
    plain = encode.unaries(loaded, rf.features, tokens)
    if "pool" not in {f.name for f in dataclasses.fields(loaded.config)}:
        pytest.skip("this EmbedConfig has no pool option")
    loaded.config = dataclasses.replace(loaded.config, pool="mean")
    loaded.model.cfg = loaded.config
    for a, b in zip(plain, encode.unaries(loaded, rf.features, tokens)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_snippet_export_on_real_photos(tiny_model: Path, tiny_store: Path, sample_photos: list[Path],
                                       sample_captions: dict, tmp_path: Path) -> None:
    loaded = load_align(tiny_model)
    by_id = {p.name: Record(p.name, p, "train", sample_captions[p.name]) for p in sample_photos}
    records = [by_id[p.name] for p in sample_photos[:5]]  # the 5th is not in the store: skipped
    with FeatureStore(tiny_store, readonly=True) as fs:
        n = snippets.write_jsonl(snippets.snippets(loaded, fs, records, beta=0.5), tmp_path / "s.jsonl")
    rows = snippets.read_snippets(tmp_path / "s.jsonl")
    assert n == len(rows) > 0
    assert {r["image_id"] for r in rows} == {p.name for p in sample_photos[:4]}
    for r in rows:
        w, h = images.load(by_id[r["image_id"]].path).size
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert r["fragment"].strip() and 0 <= r["region"] < TINY.max_regions
        assert set(r) >= {"image_id", "sentence_index", "region", "box", "fragment", "score"}
    # Every sentence comes back whole, as its fragments in order.
    for rec in records[:4]:
        for k, s in enumerate(rec.sentences):
            frags = [r for r in rows if r["image_id"] == rec.image_id and r["sentence_index"] == k]
            assert " ".join(f["fragment"] for f in frags) == " ".join(tokenize(s))


def test_export_refuses_a_store_from_another_extractor(tiny_model: Path, tmp_path: Path) -> None:
    loaded = load_align(tiny_model)

    class Store:
        config = REGION_PRESETS["default"]
        path = tmp_path / "store"

    with pytest.raises(StoreError):
        list(snippets.snippets(loaded, Store(), [Record("x.jpg", tmp_path / "x.jpg", "train", ("a dog",))]))


def test_global_baseline_model_cannot_align(tiny_model: Path, tiny_store: Path) -> None:
    import dataclasses

    loaded = load_align(tiny_model)
    if "arch" not in {f.name for f in dataclasses.fields(loaded.config)}:
        pytest.skip("this EmbedConfig has no arch option")
    loaded.config = dataclasses.replace(loaded.config, arch="global")
    with FeatureStore(tiny_store, readonly=True) as fs, pytest.raises(ModelError):
        aligner.align_features(loaded, fs.get(fs.ids()[0]), "a dog")


def test_hybrid_model_aligns_on_its_region_word_part(tiny_store: Path, tmp_path: Path, caption_vocab) -> None:
    import dataclasses

    from vsa_search.models.alignment import build_model

    torch.manual_seed(1)
    vocab = caption_vocab
    hybrid = build_model(dataclasses.replace(EMBED_PRESETS["tiny"], arch="hybrid"), len(vocab)).eval()
    plain = build_model(EMBED_PRESETS["tiny"], len(vocab)).eval()
    plain.load_state_dict({k: v for k, v in hybrid.state_dict().items() if not k.startswith("glob.")})
    a = load_align(save_align(hybrid, vocab, TINY, tmp_path / "h.pt"))
    b = load_align(save_align(plain, vocab, TINY, tmp_path / "p.pt"))
    with FeatureStore(tiny_store, readonly=True) as fs:
        rf = fs.get(fs.ids()[0])
    tokens = [["a", "dog", "on", "the", "grass"]]
    np.testing.assert_allclose(encode.unaries(a, rf.features, tokens)[0], encode.unaries(b, rf.features, tokens)[0],
                               rtol=1e-5, atol=1e-6)
    stored = a.model.encode_regions(torch.from_numpy(rf.features)[None])[0].detach().numpy()  # (R, 2h) as indexed
    np.testing.assert_allclose(encode.unaries(a, rf.features, tokens, vectors=stored)[0],
                               encode.unaries(b, rf.features, tokens)[0], rtol=1e-5, atol=1e-6)
