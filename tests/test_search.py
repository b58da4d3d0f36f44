"""Two-stage search against brute force, text -> photo and photo -> sentence, contact sheets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsa_search import index as ix
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import QueryError, SearchIndexError, UsageError
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.index import query, sheet
from vsa_search.models import encode
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.vision.regions import RegionEncoder

TINY = REGION_PRESETS["tiny"]
WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "girl", "water", "two", "is", "running"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + WORDS)
    return load_align(save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, TINY,
                                 tmp_path_factory.mktemp("m") / "tiny.pt"))


@pytest.fixture(scope="module")
def encoder() -> RegionEncoder:
    return RegionEncoder(TINY, "cpu")


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], model, encoder) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for p in sample_photos[:6]:
        shutil.copy2(p, d / p.name)
    link = d.parent / (d.name + "-idx")
    ix.build_photos([d], model, link, encoder=encoder)
    return link


def synthetic(n_items: int, regions: int, dim: int, seed: int) -> tuple[list[np.ndarray], np.random.Generator]:
    """Clustered vectors (like region vectors: a few concepts each, plus noise)."""
    rng = np.random.default_rng(seed)
    concepts = rng.normal(0, 1, (40, dim)).astype(np.float32)
    items = []
    for _ in range(n_items):
        own = rng.integers(0, 40, 3)
        v = concepts[rng.choice(own, regions)] * rng.uniform(0.3, 1.2, (regions, 1))
        items.append((v + rng.normal(0, 0.3, (regions, dim))).astype(np.float16))
    return items, rng


def write(tmp: Path, items: list[np.ndarray], kind: str) -> ix.FragmentIndex:
    loc = ix.Location(tmp / f"syn-{kind}")
    gen = (ix.Item(f"p{i:05d}", {}, v, None) for i, v in enumerate(items))
    ix.write_generation(loc, "photos", gen, items[0].shape[1], {"fingerprint": "syn", "path": "-"}, kind)
    return ix.FragmentIndex(loc)


def test_flat_two_stage_is_the_exhaustive_top_k(tmp_path: Path) -> None:
    items, rng = synthetic(300, 8, 24, seed=1)
    with write(tmp_path, items, "flat") as x:
        for _ in range(10):
            q = rng.normal(0, 1, (4, 24)).astype(np.float32)
            want_items, want_scores = query.exhaustive(x, q, 10)
            r = query.two_stage(x, q, 10)  # flat: every photo scored from the index's own vectors
            assert r.exact and r.items.tolist() == want_items.tolist()
            np.testing.assert_allclose(r.scores, want_scores, rtol=1e-5)
            # An explicit depth runs the two stages: shallow on purpose, it must grow until the
            # bound proves the top k.
            r = query.two_stage(x, q, 10, per_word=8)
            assert r.exact
            assert r.items.tolist() == want_items.tolist()
            np.testing.assert_allclose(r.scores, want_scores, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_against_brute_force(tmp_path: Path, kind: str) -> None:
    items, rng = synthetic(1500, 10, 32, seed=2)
    with write(tmp_path, items, kind) as x:
        assert x.index_type == kind
        recalls = []
        for _ in range(20):
            own = items[rng.integers(len(items))].astype(np.float32)
            q = own[rng.choice(10, 3, replace=False)] + rng.normal(0, 0.3, (3, 32)).astype(np.float32)
            r = query.two_stage(x, q, 10)
            want, _ = query.exhaustive(x, q, 10)
            recalls.append(len(set(r.items.tolist()) & set(want.tolist())) / 10)
            assert not r.exact
        # The dots FAISS reports are the true v.s (IVF stores centred vectors, HNSW an L2 reduction).
        d, ids = x.search(q, 5)
        flat = np.concatenate(x.vectors(range(len(x)))).astype(np.float32)
        np.testing.assert_allclose(d, np.take_along_axis(q @ flat.T, ids, 1), rtol=1e-3, atol=1e-3)
    assert np.mean(recalls) >= 0.95


def test_search_text_hits_have_a_box_per_word(photo_index: Path, model, sample_photos: list[Path]) -> None:
    with ix.open_index(photo_index) as x:
        res = query.search_text(x, model, "A dog on the xylophone grass", k=4)
        assert res.words == ["a", "dog", "on", "the", "grass"] and res.ignored == ["xylophone"]
        assert len(res.hits) == 4 and res.exact
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
        for h in res.hits:
            assert [m.word for m in h.words] == res.words
            w, hh = Image.open(h.key).size
            for m in h.words:
                x0, y0, x1, y1 = m.box
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= hh
            assert h.score == pytest.approx(sum(m.score for m in h.words), rel=1e-4)
        # The same query through the exhaustive path ranks the same photos.
        _, _, q = encode.query_vectors(model, "A dog on the xylophone grass")
        want, _ = query.exhaustive(x, q, 4)
        assert [x.record(int(i))["key"] for i in want] == [h.key for h in res.hits]
        assert query.search_text(x, model, "dog", k=100).hits.__len__() == 6  # k beyond the index: all


def test_bad_queries_are_clear_errors(photo_index: Path, model) -> None:
    with ix.open_index(photo_index) as x:
        with pytest.raises(QueryError, match="empty query"):
            query.search_text(x, model, "  ?! ", k=3)
        with pytest.raises(QueryError, match="no known words"):
            query.search_text(x, model, "xylophone zeppelin", k=3)
        with pytest.raises(UsageError, match="-k must be at least 1"):
            query.search_text(x, model, "dog", k=0)


def test_image_to_text(tmp_path: Path, model, encoder, sample_photos: list[Path]) -> None:
    caps = tmp_path / "captions.txt"
    caps.write_text("x.jpg#0\tA dog is running on the grass .\nx.jpg#1\tTwo men in red .\n"
                    "y.jpg#0\tA girl in the water .\ny.jpg#1\tzeppelin xylophone\n")
    plain = tmp_path / "more.txt"
    plain.write_text("a man on the grass\n")
    rep = ix.build_sentences([caps, plain], model, tmp_path / "idx")
    assert (rep.sentences, rep.skipped) == (4, 1)  # the all-unknown caption has no fragments
    with ix.open_index(tmp_path / "idx", "sentences") as x:
        res = query.search_image(x, model, sample_photos[0], k=3, encoder=encoder)
        assert len(res.hits) == 3
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
        # Exhaustive check: S = Σ_words max_regions over every sentence in the index.
        _, v = query.photo_regions(model, sample_photos[0], encoder)
        everything = [(float((s.astype(np.float32) @ v.T).max(1).sum()), x.record(i)["text"])
                      for i, s in enumerate(x.vectors(range(len(x))))]
        assert [h.text for h in res.hits] == [t for _, t in sorted(everything, reverse=True)[:3]]
        for h in res.hits:
            assert [m.word for m in h.words] == x.record(int(np.flatnonzero(
                [x.record(i)["key"] == h.key for i in range(len(x))])[0]))["words"]
            assert all(len(m.box) == 4 for m in h.words)


def test_contact_sheet(photo_index: Path, model, tmp_path: Path) -> None:
    with ix.open_index(photo_index) as x:
        res = query.search_text(x, model, "a dog on the grass", k=3)
    out = sheet.contact_sheet(res, tmp_path / "sheet.png", thumb=200, columns=2)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (2 * 208 + 8, 28 + 2 * (200 + 36 + 8) + 8)
        # The first word's box and label are drawn in the first colour of the palette.
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert (px == (230, 25, 75)).all(1).sum() > 100


def shared_items(n_items: int, regions: int, part: int, shared: int, seed: int) -> list[np.ndarray]:
    """Items whose last `shared` dims are the same in all their regions (a hybrid model's global term)."""
    items, rng = synthetic(n_items, regions, part, seed)
    return [np.hstack([v.astype(np.float32), np.repeat(rng.normal(0, 1, (1, shared)), regions, 0)]).astype(np.float32)
            for v in items]


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_shared_part_is_stored_once_and_scored_exactly(tmp_path: Path, kind: str) -> None:
    items = shared_items(1100 if kind == "pq" else 200, 10, 24, 16, seed=3)
    loc = ix.Location(tmp_path / kind)
    gen = ix.write_generation(loc, "photos", (ix.Item(f"p{i:05d}", {}, v) for i, v in enumerate(items)), 40,
                              {"fingerprint": "syn", "path": "-"}, kind, shared_dim=16)
    # One int8 row per region for its own 24 dims, one per photo for the 16 it shares with its other regions.
    assert np.load(gen / "vectors.npy", mmap_mode="r").shape == (10 * len(items), 24)
    assert np.load(gen / "shared.npy", mmap_mode="r").shape == (len(items), 16)
    rng = np.random.default_rng(4)
    with ix.FragmentIndex(loc) as x:
        assert x.index_type == kind and (x.faiss is None) == (kind == "flat")
        got = np.concatenate(x.vectors(range(len(x))))
        want = np.concatenate(items)
        np.testing.assert_allclose(got, want, rtol=0, atol=np.abs(want).max() / 127)
        recalls = []
        for _ in range(10):
            own = items[rng.integers(len(items))]
            q = own[rng.choice(10, 3, replace=False)] + rng.normal(0, 0.3, (3, 40)).astype(np.float32)
            r = query.two_stage(x, q, 10)
            want_items, want_scores = query.exhaustive(x, q, 10)
            # The exhaustive scores are S_kl of the stored vectors: Σ_t max_i v_i·s_t, global part included.
            stored = x.vectors(want_items)
            np.testing.assert_allclose(want_scores, [(q @ v.T).max(1).sum() for v in stored], rtol=1e-4, atol=1e-4)
            recalls.append(len(set(r.items.tolist()) & set(want_items.tolist())) / 10)
            assert r.exact == (kind == "flat")
        assert np.mean(recalls) >= (1.0 if kind == "flat" else 0.95)


def test_a_shared_part_that_differs_between_regions_is_refused(tmp_path: Path) -> None:
    v = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)  # no two rows share their tail
    with pytest.raises(SearchIndexError, match="differ between its fragments"):
        ix.write_generation(ix.Location(tmp_path / "x"), "photos", [ix.Item("a", {}, v)], 8,
                            {"fingerprint": "syn", "path": "-"}, "flat", shared_dim=3)
    assert ix.Location(tmp_path / "x").generations() == []
