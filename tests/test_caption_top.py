"""Captions whose re-ranker reads the features of a fine-tuned CNN top (RegionConfig.top): the caption
path computes them and ImageNet's in one CNN pass; the generator reads ImageNet's, the re-ranker its own,
in numpy as in torch; a re-ranker of other boxes is refused; `eval caption` and `eval rerank-weight` read
its features from a second store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tiny_align import TINY, tiny_captioner, tiny_top, tiny_top_model
from typer.testing import CliRunner

from vsa_search.captioning import caption_photos
from vsa_search.captioning.load import load_captioning
from vsa_search.captioning.rerank import best_candidate, load_reranker
from vsa_search.cli import app
from vsa_search.core import arrayfile, paths
from vsa_search.core.config import RegionConfig
from vsa_search.core.errors import ModelError, StoreError, UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.evaluation import metrics
from vsa_search.evaluation.captions import evaluate_captions, tune_rerank_weight
from vsa_search.models import decode_np, rerank_np
from vsa_search.models.alignment import load_align
from vsa_search.models.beam import generate_candidates
from vsa_search.models.captioner import full_image, load_caption
from vsa_search.vision.cnn import NumpyRegionEncoder
from vsa_search.vision.features import FeatureStore, extract_to_store
from vsa_search.vision.regions import RegionEncoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
PHOTOS = [EXAMPLES / n for n in ("coffee.jpg", "horse.jpg", "grass.jpg")]
WEIGHT = 1000.0  # the re-ranker decides


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """Its own $VSA_HOME: the exports of these models land in its cache."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def models(home: Path, caption_vocab) -> dict:
    """A tiny captioner on the tiny preset's ImageNet features, and a tiny re-ranker on a moved top's."""
    cap = tiny_captioner(home / "cap.pt", caption_vocab)
    top = tiny_top()
    return {"cap": cap, "top": top, "align": tiny_top_model(home / "top.pt", top=top, vocab=caption_vocab)}


def captions(results) -> list[tuple[str, float]]:
    assert all(r.error is None for r in results), [r.error for r in results]
    return [(r.caption, r.logprob) for r in results]


def test_the_generator_reads_imagenets_features_the_reranker_the_tops(models) -> None:
    cap, align = load_caption(models["cap"]), load_align(models["align"])
    got = captions(caption_photos(PHOTOS, cap, beam=4, rerank_with=align, rerank_weight=WEIGHT))
    enc = RegionEncoder(align.region_config, "cpu", top=models["top"])
    picked_other = moved = False
    for photo, (text, logprob) in zip(PHOTOS, got, strict=True):
        rf = enc.encode_photo(photo)
        cands = generate_candidates(cap, full_image(dataclasses.replace(rf, features=rf.imagenet))[None], beam=4)[0]
        want = best_candidate(cands, cap.vocab, align, rf.features, WEIGHT)
        assert text == " ".join(cap.vocab.decode(want.tokens)) and logprob == pytest.approx(want.logprob)
        picked_other |= want is not max(cands, key=lambda c: c.logprob)
        # the generator on the top's features would have written other sentences
        on_top = generate_candidates(cap, full_image(rf)[None], beam=4)[0]
        moved |= [c.tokens for c in on_top] != [c.tokens for c in cands]
    assert picked_other  # the re-ranker's choice mattered somewhere
    assert moved  # the generator on the top's features would have written other sentences


def test_numpy_captions_equal_the_torch_ones(models) -> None:
    loaded, align, enc = load_captioning(models["cap"], str(models["align"]), "cpu")
    assert isinstance(loaded, decode_np.NumpyCaptioner) and isinstance(align, rerank_np.NumpyAlign)
    assert isinstance(enc, NumpyRegionEncoder) and enc.cfg == align.region_config and enc.tuned is not None
    assert set(align.top) == set(models["top"])
    assert all(np.array_equal(align.top[k], models["top"][k]) for k in models["top"])
    got = captions(caption_photos(PHOTOS, loaded, beam=4, encoder=enc, rerank_with=align, rerank_weight=WEIGHT))
    want = captions(caption_photos(PHOTOS, load_caption(models["cap"]), beam=4,
                                   rerank_with=load_align(models["align"]), rerank_weight=WEIGHT))
    assert [t for t, _ in got] == [t for t, _ in want]
    np.testing.assert_allclose([lp for _, lp in got], [lp for _, lp in want], rtol=2e-5)  # log P down to -230
    # weight 0: beam search's own pick, which is the caption without a re-ranker (ImageNet's features)
    zero = captions(caption_photos(PHOTOS, loaded, beam=4, encoder=enc, rerank_with=align, rerank_weight=0.0))
    plain_loaded, none, plain_enc = load_captioning(models["cap"], "none", "cpu")
    assert none is None and plain_enc.tuned is None
    assert zero == captions(caption_photos(PHOTOS, plain_loaded, beam=4, encoder=plain_enc))


def test_the_default_reranker_may_have_a_top(models, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "ALIGN_MODEL", str(models["align"]))
    for numpy in (True, False):
        cap = decode_np.load_caption(models["cap"]) if numpy else load_caption(models["cap"])
        assert load_reranker(None, cap, numpy=numpy).path == models["align"]


def test_a_reranker_of_other_boxes_is_refused(models, home: Path) -> None:
    other = tiny_top_model(home / "other.pt", top=models["top"], region_cfg=RegionConfig())  # 224 px, 10 regions
    cap = load_caption(models["cap"])
    with pytest.raises(UsageError, match="other features"):
        load_reranker(str(other), cap)
    r = CliRunner().invoke(app, ["caption", str(PHOTOS[0]), "--model", str(models["cap"]), "--rerank", str(other),
                                 "--device", "cpu"], prog_name="vsa")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "other features" in r.stderr, r.stderr
    # an encoder without the re-ranker's top: its features would not be the re-ranker's
    with pytest.raises(UsageError, match="region encoder computes those of ImageNet"):
        caption_photos(PHOTOS[:1], cap, rerank_with=load_align(models["align"]),
                       encoder=NumpyRegionEncoder(TINY))


def test_an_export_without_the_top_is_refused(models, tmp_path: Path) -> None:
    path = tmp_path / "copy.pt"
    path.write_bytes(models["align"].read_bytes())
    header, arrays = arrayfile.cached_export("rerank", path) or rerank_np._export(path)
    keep = {k: np.asarray(v) for k, v in arrays.items() if not k.startswith("cnn.")}
    arrayfile.write_export("rerank", path, {k: v for k, v in header.items() if k not in ("kind", "source", "stamp")},
                           keep)
    with pytest.raises(ModelError, match="its features need the CNN top cut6-"):
        rerank_np.load_align(path)


@pytest.fixture(scope="module")
def stores(models, home: Path, flickr_root: Path, tiny_region_encoder) -> dict:
    """The captioner's store (ImageNet's features) and the re-ranker's (its top's) of a few Flickr8k photos."""
    ds = load_flickr8k(flickr_root)
    photos = {r.image_id: r.path for r in ds.present("train")[:2] + ds.present("dev")[:3] + ds.present("test")[:3]}
    cfg = load_align(models["align"]).region_config
    extract_to_store(photos, home / "imagenet", TINY, encoder=tiny_region_encoder)
    extract_to_store(photos, home / "tuned", cfg, encoder=RegionEncoder(cfg, "cpu", top=models["top"]))
    part = dict(list(photos.items())[:-1])
    extract_to_store(part, home / "part", cfg, encoder=RegionEncoder(cfg, "cpu", top=models["top"]))
    return {"dataset": ds, "root": flickr_root, "imagenet": home / "imagenet", "tuned": home / "tuned",
            "part": home / "part"}


def test_eval_caption_reads_the_rerankers_own_store(models, stores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    res = evaluate_captions(models["cap"], stores["imagenet"], beam=3, rerank_with=models["align"],
                            rerank_weight=WEIGHT, rerank_features=stores["tuned"], dataset=stores["dataset"])
    assert res["rerank"]["features"] == str(stores["tuned"]) and res["test_photos"] == 3
    cap, align = load_caption(models["cap"]), load_align(models["align"])
    with FeatureStore(stores["imagenet"], readonly=True) as im, FeatureStore(stores["tuned"], readonly=True) as tu:
        for c in res["captions"]:
            cands = generate_candidates(cap, full_image(im.get(c["image"]))[None], beam=3)[0]
            want = best_candidate(cands, cap.vocab, align, tu.get(c["image"]).features, WEIGHT)
            assert c["model"] == " ".join(cap.vocab.decode(want.tokens))
    with pytest.raises(StoreError, match="lacks 1 of the 3 photos"):
        evaluate_captions(models["cap"], stores["imagenet"], beam=3, rerank_with=models["align"],
                          rerank_features=stores["part"], dataset=stores["dataset"])
    with pytest.raises(StoreError, match="no store of"):  # the default, the evaluation cache, holds none
        evaluate_captions(models["cap"], stores["imagenet"], beam=3, rerank_with=models["align"],
                          dataset=stores["dataset"])


def test_eval_rerank_weight_too(models, stores, tmp_path: Path) -> None:
    w, res = tune_rerank_weight(models["cap"], stores["imagenet"], "dev", (0.0, WEIGHT), beam=3,
                                rerank_with=models["align"], rerank_features=stores["tuned"],
                                dataset=stores["dataset"])
    assert res["photos"] == 3 and res["rerank_features"] == str(stores["tuned"]) and w in (0.0, WEIGHT)
    assert [(r["length_norm"], r["weight"]) for r in res["rows"]] == [(0.0, 0.0), (0.0, WEIGHT)]
    assert all(r["words"] > 0 and "METEOR" not in r for r in res["rows"])
    r = CliRunner().invoke(app, ["eval", "rerank-weight", "--features", str(stores["imagenet"]), "--model",
                                 str(models["cap"]), "--rerank", str(models["align"]), "--rerank-features",
                                 str(tmp_path / "nothing"), "--root", str(stores["root"])],
                           prog_name="vsa")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no store of" in r.stderr, r.stderr
