"""The numpy caption generator, beam search and re-ranker (models/decode_np.py, models/rerank_np.py)
give what the torch ones give: the same sentences in the same order, log-probabilities and scores to
float32 rounding, on the shipped models and real photos' features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.captioning.rerank import alignment_scores
from vsa_search.core import paths
from vsa_search.core.config import CaptionConfig, RegionConfig
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models import decode_np, rerank_np
from vsa_search.models.alignment import load_align
from vsa_search.models.beam import generate_candidates
from vsa_search.models.captioner import Captioner, load_caption, save_caption
from vsa_search.vision.cnn import NumpyRegionEncoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
MODELS = paths.shipped_models_dir()


@pytest.fixture(scope="module")
def regions() -> list[np.ndarray]:
    enc = NumpyRegionEncoder(RegionConfig())
    return [enc.encode_photo(p).features for p in sorted(EXAMPLES.glob("*.jpg"))[:6]]


def same_candidates(want: list[list], got: list[list]) -> None:
    assert [[c.tokens for c in w] for w in want] == [[c.tokens for c in g] for g in got]
    for w, g in zip(want, got):
        np.testing.assert_allclose([c.logprob for c in g], [c.logprob for c in w], atol=5e-5, rtol=0)
        np.testing.assert_allclose([c.score for c in g], [c.score for c in w], atol=5e-5, rtol=0)


@pytest.mark.parametrize("model", ["caption-ensemble", "caption"])
@pytest.mark.parametrize(("beam", "length_norm", "stop"), [(7, 0.0, True), (7, 0.0, False), (3, 0.7, False),
                                                           (1, 0.0, True)])
def test_beams_equal_the_torch_search(regions, model: str, beam: int, length_norm: float, stop: bool) -> None:
    path = MODELS / f"{model}.pt"
    feats = np.stack([r[0] for r in regions]).astype(np.float32)
    want = generate_candidates(load_caption(path), torch.from_numpy(feats), beam=beam, length_norm=length_norm,
                               stop_at_best=stop)
    numpy_model = decode_np.load_caption(path)
    got = decode_np.generate_candidates(numpy_model, feats, beam=beam, length_norm=length_norm, stop_at_best=stop)
    same_candidates(want, got)
    assert sum(len(c) for c in got) >= len(feats)
    # a photo's sentences never depend on which photos share its batch
    alone = [decode_np.generate_candidates(numpy_model, f[None], beam=beam, length_norm=length_norm,
                                           stop_at_best=stop)[0] for f in feats]
    same_candidates(got, alone)


def test_an_rnn_cell_and_a_short_max_len(tmp_path: Path, regions) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(CaptionConfig(), cell="rnn", hidden=32, word_dim=16, max_len=4)
    vocab = Vocab(list(SPECIALS) + "a dog on the grass man in red water cat".split())
    model = Captioner(cfg, len(vocab)).eval()
    path = save_caption(model, vocab, RegionConfig(), tmp_path / "rnn.pt")
    feats = np.stack([r[0] for r in regions]).astype(np.float32)
    want = generate_candidates(load_caption(path), torch.from_numpy(feats), beam=4)
    got = decode_np.generate_candidates(decode_np.load_caption(path), feats, beam=4)
    same_candidates(want, got)
    assert all(len(c.tokens) <= 4 for g in got for c in g)


def test_rerank_scores_equal_the_torch_models(regions) -> None:
    texts = ["a dog runs on the grass", "a black and white dog is playing with a toy", "a man in a red shirt",
             "people", "zzz qqq"]
    torch_model, numpy_model = load_align(MODELS / "align.pt"), rerank_np.load_align(MODELS / "align.pt")
    assert numpy_model.bank is not None  # the shipped model normalises with a querybank
    for feats in regions:
        want = alignment_scores(torch_model, feats, texts)
        got = alignment_scores(numpy_model, feats, texts)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["align-global"])
def test_a_global_reranker_too(regions, name: str) -> None:
    path = MODELS / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} is not shipped")
    texts = ["a dog runs on the grass", "a man in a red shirt"]
    want = alignment_scores(load_align(path), regions[0], texts)
    np.testing.assert_allclose(alignment_scores(rerank_np.load_align(path), regions[0], texts), want, atol=2e-5)
