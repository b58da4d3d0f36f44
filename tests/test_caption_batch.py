"""A photo's caption does not depend on the other photos captioned with it: the shipped generator and
re-ranker on real photos of different sizes (a wide one among them), in one call and one at a time,
give the same captions and log-probabilities; so do `vsa eval caption`'s batches and the region captions.
The generator reads ImageNet's features; the shipped re-ranker those of its fine-tuned CNN top (the caption
path runs both from one CNN pass, rerank.feature_source)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsa_search.captioning import caption_photos, region_captions
from vsa_search.captioning.rerank import best_candidate, feature_source, load_reranker
from vsa_search.core import paths
from vsa_search.data.datasets import load_dataset
from vsa_search.evaluation import metrics
from vsa_search.evaluation.captions import evaluate_captions
from vsa_search.models.beam import beam_candidates, best, generate_candidates
from vsa_search.models.captioner import load_caption, photo_input
from vsa_search.vision.features import FeatureStore, extract_to_store
from vsa_search.vision.images import load
from vsa_search.vision.regions import RegionEncoder

SHIPPED = paths.shipped_models_dir()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
pytestmark = pytest.mark.skipif(not (SHIPPED / "caption-ensemble.pt").is_file() or not (SHIPPED / "align.pt").is_file(),
                                reason="needs the shipped weights/caption-ensemble.pt and weights/align.pt")
NAMES = ("horse.jpg", "gravel.jpg", "coffee.jpg", "coins.jpg")  # 400x328, 400x400, 400x267, 384x303


@pytest.fixture(scope="module")
def shipped():
    """The generator, its default re-ranker, the generator's (ImageNet) region encoder, and the encoder
    the caption path builds for that re-ranker (its extractor and top, ImageNet's features beside)."""
    cap = load_caption(SHIPPED / "caption-ensemble.pt")
    align = load_reranker(None, cap)
    cfg, top = feature_source(cap, align)
    return cap, align, RegionEncoder(cap.region_config, "cpu"), RegionEncoder(cfg, "cpu", top=top)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four sample photos and a wide one (three side by side, 1200x267)."""
    d = tmp_path_factory.mktemp("batch")
    parts = [Image.open(EXAMPLES / n).convert("RGB").resize((400, 267)) for n in ("rocket.jpg", "coffee.jpg",
                                                                                 "chelsea-cat.jpg")]
    wide = Image.new("RGB", (1200, 267))
    for i, p in enumerate(parts):
        wide.paste(p, (400 * i, 0))
    wide.save(d / "wide.png")
    return [EXAMPLES / n for n in NAMES] + [d / "wide.png"]


def test_a_photo_gets_the_same_candidates_in_any_batch(shipped, photos) -> None:
    cap, _, encoder, _ = shipped
    feats = torch.stack([photo_input(encoder.encode_one(load(p)), cap.config) for p in photos])
    together = beam_candidates(cap.model, feats, beam=7, max_len=cap.config.max_len)
    for i in range(len(photos)):
        alone = beam_candidates(cap.model, feats[i:i + 1], beam=7, max_len=cap.config.max_len)[0]
        assert [c.tokens for c in together[i]] == [c.tokens for c in alone]
        np.testing.assert_allclose([c.logprob for c in together[i]], [c.logprob for c in alone], atol=1e-5)
    short = beam_candidates(cap.model, feats, beam=7, max_len=cap.config.max_len, stop_at_best=True)
    for i in range(len(photos)):  # stopping at the best drops only later, worse sentences
        assert [c.tokens for c in short[i]] == [c.tokens for c in together[i][:len(short[i])]]
        assert best(short[i]).tokens == best(together[i]).tokens
        assert max((c.logprob for c in together[i][len(short[i]):]), default=-np.inf) <= best(short[i]).logprob


def test_captions_in_one_call_equal_captions_one_at_a_time(shipped, photos) -> None:
    cap, align, _, encoder = shipped
    assert align is not None  # the shipped default re-ranks
    together = caption_photos(photos, cap, beam=7, encoder=encoder, rerank_with=align)
    for p, t in zip(photos, together, strict=True):
        alone = caption_photos([p], cap, beam=7, encoder=encoder, rerank_with=align)[0]
        assert (t.photo, t.caption) == (alone.photo, alone.caption)
        assert t.logprob == pytest.approx(alone.logprob, abs=1e-5)
    plain = caption_photos(photos, cap, beam=7, encoder=encoder)
    for p, t in zip(photos, plain, strict=True):
        assert t.caption == caption_photos([p], cap, beam=7, encoder=encoder)[0].caption


def test_region_captions_do_not_depend_on_the_other_regions(shipped, photos) -> None:
    cap, _, encoder, _ = shipped
    regions = encoder.encode_one(load(photos[-1]))
    together = region_captions(cap, regions, beam=7)
    x = torch.from_numpy(np.asarray(regions.features, np.float32))
    for r in together:
        alone = best(beam_candidates(cap.model, x[r.region:r.region + 1], beam=7, max_len=cap.config.max_len)[0])
        assert r.caption == " ".join(cap.vocab.decode(alone.tokens))
        assert r.logprob == pytest.approx(alone.logprob, abs=1e-5)


def test_eval_caption_batches_equal_one_photo_at_a_time(shipped, photos, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`vsa eval caption` decodes 64 photos at a time: each caption is the one its photo gets alone."""
    cap, align, encoder, rerank_encoder = shipped
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"images": [
        {"filename": p.name, "split": "test", "sentences": [{"raw": "a photo"}]} for p in photos]}))
    root = tmp_path / "photos"
    root.mkdir()
    for p in photos:
        (root / p.name).symlink_to(p)
    ds = load_dataset("karpathy", root, dataset_json=captions)
    store = tmp_path / "store"
    rerank_store = tmp_path / "rerank-store"  # the re-ranker's features of the same boxes (--rerank-features)
    test = {r.image_id: r.path for r in ds.present("test")}
    extract_to_store(test, store, cap.region_config, encoder=encoder)
    extract_to_store(test, rerank_store, align.region_config, encoder=rerank_encoder)
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    # a length normalisation other than none, so that the batched beams rank by it (the file's own is the
    # default: tests/test_rerank.py)
    res = evaluate_captions(SHIPPED / "caption-ensemble.pt", store, dataset=ds, meteor=False,
                            rerank_features=rerank_store, length_norm=0.5)
    weight, norm = res["rerank"]["weight"], res["length_norm"]
    assert norm == 0.5 and weight == cap.metrics["rerank_weight"]
    with FeatureStore(store, readonly=True) as st, FeatureStore(rerank_store, readonly=True) as rst:
        for c in res["captions"]:
            f = st.get(c["image"])
            cands = generate_candidates(cap, photo_input(f, cap.config)[None], beam=7, length_norm=norm)[0]
            want = best_candidate(cands, cap.vocab, align, rst.get(c["image"]).features, weight)
            assert c["model"] == " ".join(cap.vocab.decode(want.tokens))
            assert c["logprob"] == pytest.approx(want.logprob, abs=1e-3)  # the report rounds to 3 places
