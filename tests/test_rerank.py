"""Captions re-ranked by the alignment model: the pick maximises log P + w·S' over the finished beams,
scores do not depend on which other candidates share the batch, the CLI's default and errors, and
`vsa eval caption` showing the captions with and without the re-ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.captioning import caption_photos
from vsa_search.captioning.rerank import alignment_scores, best_candidate, load_reranker
from vsa_search.core.config import CAPTION_PRESETS, EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.evaluation import metrics
from vsa_search.evaluation.captions import evaluate_captions
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.models.beam import generate_candidates
from vsa_search.models.captioner import Captioner, full_image, load_caption, save_caption
from vsa_search.vision.features import FeatureStore, extract_to_store

TINY = REGION_PRESETS["tiny"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, caption_vocab) -> tuple[Path, Path]:
    """(tiny captioner, tiny alignment model) on the same tiny-preset features."""
    d = tmp_path_factory.mktemp("rerank")
    torch.manual_seed(0)
    cap = save_caption(Captioner(CAPTION_PRESETS["tiny"], len(caption_vocab)), caption_vocab, TINY, d / "cap.pt")
    align = save_align(AlignModel(EMBED_PRESETS["tiny"], len(caption_vocab)).eval(), caption_vocab, TINY,
                       d / "align.pt")
    return cap, align


@pytest.fixture(scope="module")
def photo(sample_photos: list[Path], tiny_region_encoder):
    return sample_photos[0], tiny_region_encoder.encode_photo(sample_photos[0])  # as `vsa caption` computes them


def test_the_pick_maximises_logprob_plus_weighted_alignment(models, photo) -> None:
    cap, align = load_caption(models[0]), load_align(models[1])
    _, regions = photo
    cands = generate_candidates(cap, full_image(regions)[None], beam=4)[0]
    assert len(cands) >= 2
    texts = [" ".join(cap.vocab.decode(c.tokens)) for c in cands]
    together = alignment_scores(align, regions.features, texts)
    alone = np.array([alignment_scores(align, regions.features, [t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding in a batch changes nothing
    for w in (0.0, 1.0, 1000.0):
        want = cands[int(np.argmax([c.logprob + w * s for c, s in zip(cands, alone)]))]
        assert best_candidate(cands, cap.vocab, align, regions.features, w) is want
    assert best_candidate(cands, cap.vocab, align, regions.features, 0.0).logprob == max(c.logprob for c in cands)


def test_caption_photos_uses_the_reranker(models, photo, tiny_region_encoder) -> None:
    cap, align = load_caption(models[0]), load_align(models[1])
    path, regions = photo
    cands = generate_candidates(cap, full_image(regions)[None], beam=4)[0]
    want = best_candidate(cands, cap.vocab, align, regions.features, 1000.0)
    got = caption_photos([path], cap, beam=4, encoder=tiny_region_encoder, rerank_with=align, rerank_weight=1000.0)
    assert got[0].caption == " ".join(cap.vocab.decode(want.tokens))
    assert got[0].logprob == pytest.approx(want.logprob)


def test_which_reranker(models) -> None:
    cap = load_caption(models[0])
    assert load_reranker("none", cap) is None
    assert load_reranker(None, cap) is None  # the shipped align.pt uses other features than the tiny model
    assert load_reranker(str(models[1]), cap).path == models[1]
    with pytest.raises(UsageError, match="other features"):
        load_reranker("align", cap)


def test_eval_caption_shows_the_captions_with_and_without_it(models, flickr_root: Path, tmp_path: Path,
                                                             tiny_region_encoder,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_flickr8k(flickr_root)
    photos = ds.present("train")[:3] + ds.present("test")[:3]
    store = tmp_path / "store"
    extract_to_store({r.image_id: r.path for r in photos}, store, TINY, encoder=tiny_region_encoder)
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    plain = evaluate_captions(models[0], store, beam=3, rerank_with="none")
    res = evaluate_captions(models[0], store, beam=3, rerank_with=models[1], rerank_weight=1000.0)
    assert plain["rerank"] is None and "this model, beam only" not in plain["rows"]
    assert res["rerank"] == {"model": str(models[1]), "weight": 1000.0}
    assert res["rows"]["this model, beam only"] == plain["rows"]["this model"]
    cap, align = load_caption(models[0]), load_align(models[1])
    with FeatureStore(store, readonly=True) as st:
        for c in res["captions"]:
            f = st.get(c["image"])
            cands = generate_candidates(cap, full_image(f)[None], beam=3)[0]
            want = best_candidate(cands, cap.vocab, align, f.features, 1000.0)
            assert c["model"] == " ".join(cap.vocab.decode(want.tokens))


def test_the_pick_weighs_the_score_the_beam_ranked_by(models, photo) -> None:
    """With a length normalisation the beam ranks by logprob / (words+1)^α; the re-ranker adds w·S' to that
    score, not to the plain log-probability (a short sentence no longer wins by being short)."""
    from vsa_search.models.decode_np import Caption

    cap, align = load_caption(models[0]), load_align(models[1])
    _, regions = photo
    short = Caption([5], -2.0, -2.0 / 2)  # α = 1: logprob / (words + 1)
    long = Caption([5, 6, 7, 8, 9], -3.0, -3.0 / 6)
    assert best_candidate([short, long], cap.vocab, align, regions.features, 0.0) is long
    cands = generate_candidates(cap, full_image(regions)[None], beam=4, length_norm=1.0)[0]
    texts = [" ".join(cap.vocab.decode(c.tokens)) for c in cands]
    fit = alignment_scores(align, regions.features, texts)
    for w in (0.0, 1.0, 1000.0):
        want = cands[int(np.argmax([c.logprob / (len(c.tokens) + 1) + w * s for c, s in zip(cands, fit)]))]
        assert best_candidate(cands, cap.vocab, align, regions.features, w) is want


def test_a_caption_file_names_its_own_length_normalisation(models, flickr_root: Path, tmp_path: Path,
                                                           tiny_region_encoder, photo,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from vsa_search.captioning.rerank import default_length_norm
    from vsa_search.train.ensemble import write_caption_ensemble

    own = tmp_path / "own.pt"
    assert write_caption_ensemble([models[0], models[0]], own, 5.0, 0.5)["length_norm"] == 0.5
    cap, plain = load_caption(own), load_caption(models[0])
    assert (default_length_norm(cap), default_length_norm(plain)) == (0.5, 0.0)
    ds = load_flickr8k(flickr_root)
    store = tmp_path / "store"
    extract_to_store({r.image_id: r.path for r in ds.present("test")[:2]}, store, TINY, encoder=tiny_region_encoder)
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    assert evaluate_captions(own, store, beam=3, rerank_with=models[1])["length_norm"] == 0.5
    assert evaluate_captions(own, store, beam=3, rerank_with=models[1], length_norm=0.0)["length_norm"] == 0.0
    path, _ = photo
    by_default = caption_photos([path], cap, beam=4, encoder=tiny_region_encoder, rerank_with=load_align(models[1]))
    said = caption_photos([path], cap, beam=4, encoder=tiny_region_encoder, rerank_with=load_align(models[1]),
                          length_norm=0.5)
    assert by_default[0].caption == said[0].caption


def test_the_choice_on_dev_is_the_best_cider_among_level_bleu() -> None:
    from vsa_search.evaluation.captions import pick_rerank

    rows = [{"length_norm": 0.0, "weight": 5.0, "BLEU-4": 20.56, "CIDEr": 47.9},
            {"length_norm": 0.5, "weight": 1.5, "BLEU-4": 20.52, "CIDEr": 49.1},
            {"length_norm": 0.5, "weight": 2.5, "BLEU-4": 20.11, "CIDEr": 49.2},  # more CIDEr, but BLEU-4 fell
            {"length_norm": 0.0, "weight": 10.0, "BLEU-4": 20.50, "CIDEr": 49.1}]  # level with the second
    assert pick_rerank(rows) is rows[1]
    assert pick_rerank(rows[:1]) is rows[0]


def test_with_meteor_the_choice_weighs_bleu_and_meteor_alike() -> None:
    from vsa_search.evaluation.captions import pick_rerank

    # the dev rows of the re-ranker read with flips (weights/caption-ensemble.md): the best BLEU-4 alone
    # (α 0, w 5) has the least METEOR
    rows = [{"length_norm": 0.0, "weight": 5.0, "BLEU-4": 20.74, "METEOR": 19.28, "CIDEr": 47.92},
            {"length_norm": 0.25, "weight": 10.0, "BLEU-4": 20.17, "METEOR": 20.17, "CIDEr": 50.26},
            {"length_norm": 0.5, "weight": 2.5, "BLEU-4": 20.22, "METEOR": 19.99, "CIDEr": 49.82},
            {"length_norm": 0.75, "weight": 20.0, "BLEU-4": 17.71, "METEOR": 20.66, "CIDEr": 44.23}]
    assert pick_rerank(rows) is rows[1]
    rows[2]["METEOR"] = 20.05  # level with the best sum (within 0.1): CIDEr decides
    assert pick_rerank(rows) is rows[1]
    rows[2]["CIDEr"] = 50.3
    assert pick_rerank(rows) is rows[2]
    assert pick_rerank([{**r, "METEOR": None} for r in rows])["weight"] == 5.0  # not measured: BLEU-4 first


def test_the_rerank_weight_command_prints_every_pair(models, flickr_root: Path, tmp_path: Path,
                                                     tiny_region_encoder) -> None:
    from typer.testing import CliRunner

    from vsa_search.cli import app

    ds = load_flickr8k(flickr_root)
    store = tmp_path / "store"
    extract_to_store({r.image_id: r.path for r in ds.present("dev")[:2]}, store, TINY, encoder=tiny_region_encoder)
    args = ["eval", "rerank-weight", "--features", str(store), "--model", str(models[0]), "--rerank",
            str(models[1]), "--root", str(flickr_root), "--beam", "3", "--weights", "0,2", "--length-norms", "0,0.5"]
    r = CliRunner().invoke(app, args, prog_name="vsa")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "length norm" in lines[1] and "METEOR" in lines[1] and len(lines) == 2 + 4 + 1
    assert [tuple(float(x) for x in line.split()[:2]) for line in lines[2:6]] == [(0, 0), (0, 2), (0.5, 0), (0.5, 2)]
    assert lines[-1].startswith("weight ") and "length normalisation" in lines[-1]
    bad = CliRunner().invoke(app, [*args[:-1], "0,x"], prog_name="vsa")
    assert bad.exit_code != 0 and "--length-norms" in bad.stderr and "Traceback" not in bad.output
