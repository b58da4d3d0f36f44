"""The numpy caption generator, beam search and re-ranker (models/decode_np.py, models/rerank_np.py)
give what the torch ones give: the same sentences in the same order, log-probabilities and scores to
float32 rounding, on the shipped models, an attention generator and an ensemble mixing it with an LSTM,
and real photos' features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.captioning.rerank import alignment_scores
from vsa_search.core import arrayfile, paths
from vsa_search.core.config import CAPTION_PRESETS, CaptionConfig, RegionConfig, to_dict
from vsa_search.data.vocab import SPECIALS, START, Vocab
from vsa_search.models import decode_np, rerank_np
from vsa_search.models.alignment import load_align
from vsa_search.models.attention import AttendCaptioner
from vsa_search.models.beam import generate_candidates
from vsa_search.models.captioner import Captioner, ensemble_captioners, load_caption, photo_input, save_caption
from vsa_search.vision.cnn import NumpyRegionEncoder
from vsa_search.vision.regions import RegionFeatures

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


# --------------------------------------------------------------------------- the attention generator

ATT = dataclasses.replace(CAPTION_PRESETS["attend-tiny"], regions=20, max_len=8)
LSTM = dataclasses.replace(CAPTION_PRESETS["tiny"], cell="lstm", hidden=ATT.hidden, word_dim=ATT.word_dim,
                           max_len=8)
WORDS = Vocab(list(SPECIALS) + "a dog on the grass man in red water cat runs jumps black white".split())


def _trained_looking(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # the attention parts start at zero: random weights let the regions matter
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _photo_inputs(regions: list[np.ndarray], cfg: CaptionConfig) -> np.ndarray:
    rfs = [RegionFeatures(np.zeros((len(r), 4), np.int32), r) for r in regions]
    rfs[1] = RegionFeatures(rfs[1].boxes[:3], rfs[1].features[:3])  # a photo of 3 regions: 17 padding rows
    x = np.stack([decode_np.photo_input(rf, cfg) for rf in rfs])
    assert np.array_equal(x, torch.stack([photo_input(rf, cfg) for rf in rfs]).numpy())  # the torch input
    return x


@pytest.fixture(scope="module")
def attend_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("attend")
    att = _trained_looking(AttendCaptioner(ATT, len(WORDS)), 0)
    files = {"attend": save_caption(att, WORDS, RegionConfig(), d / "attend.pt"),
             "lstm": save_caption(_trained_looking(Captioner(LSTM, len(WORDS)), 1), WORDS, RegionConfig(),
                                  d / "lstm.pt")}
    ens = ensemble_captioners([load_caption(files["lstm"]), load_caption(files["attend"])])
    files["mixed"] = save_caption(ens, WORDS, RegionConfig(), d / "mixed.pt")
    return files


@pytest.mark.parametrize("kind", ["attend", "mixed"])
@pytest.mark.parametrize(("beam", "length_norm", "stop"), [(7, 0.0, True), (4, 0.7, False), (1, 0.0, True)])
def test_attention_beams_equal_the_torch_search(attend_files, regions, kind: str, beam: int, length_norm: float,
                                                 stop: bool) -> None:
    torch_model, numpy_model = load_caption(attend_files[kind]), decode_np.load_caption(attend_files[kind])
    assert numpy_model.cells == (("lstm", "attend") if kind == "mixed" else ("attend",))
    feats = _photo_inputs(regions, numpy_model.config)
    want = generate_candidates(torch_model, torch.from_numpy(feats), beam=beam, length_norm=length_norm,
                               stop_at_best=stop)
    got = decode_np.generate_candidates(numpy_model, feats, beam=beam, length_norm=length_norm, stop_at_best=stop)
    same_candidates(want, got)
    alone = [decode_np.generate_candidates(numpy_model, f[None], beam=beam, length_norm=length_norm,
                                           stop_at_best=stop)[0] for f in feats]
    same_candidates(got, alone)
    # the regions matter: the photo cut to its full frame decodes otherwise
    cut = feats.copy()
    cut[:, 1:] = 0
    assert [[c.tokens for c in g] for g in decode_np.generate_candidates(numpy_model, cut, beam=beam)] != \
        [[c.tokens for c in g] for g in decode_np.generate_candidates(numpy_model, feats, beam=beam)]


def test_attention_first_step_equals_torch_and_a_lone_vector_is_a_one_row_photo(attend_files, regions) -> None:
    torch_model, numpy_model = load_caption(attend_files["attend"]), decode_np.load_caption(attend_files["attend"])
    feats = _photo_inputs(regions, ATT)
    tokens = np.full(len(feats), START, np.int64)
    with torch.no_grad():
        m = torch_model.model
        want, _ = m.step(torch.from_numpy(tokens), m.init_state(torch.from_numpy(feats)))
    got, state = numpy_model.step(tokens, numpy_model.init_state(feats))
    np.testing.assert_allclose(got, want.numpy(), atol=2e-5, rtol=0)
    assert state[0][3].sum(1).tolist() == [20, 3] + [20] * (len(feats) - 2)  # the mask of real rows
    same_candidates(generate_candidates(torch_model, torch.from_numpy(feats[:, 0]), beam=3),
                    decode_np.generate_candidates(numpy_model, feats[:, 0], beam=3))


def test_an_export_of_the_decoder_before_attention_is_not_read(tmp_path: Path) -> None:
    path = save_caption(_trained_looking(Captioner(LSTM, len(WORDS)), 2), WORDS, RegionConfig(), tmp_path / "l.pt")
    want = {k: v.float().numpy() for k, v in load_caption(path).model.state_dict().items()}
    # What the LSTM-only decoder would have exported for this very file, here with all-zero weights: its
    # exports do not carry the member cells of a mixed ensemble, so none of them is read.
    header = {"config": to_dict(LSTM), "vocab": WORDS.to_dict(), "region_config": to_dict(RegionConfig()),
              "metrics": {}}
    arrayfile.write_export("caption", path, header, {k: np.zeros_like(v) for k, v in want.items()})
    got = decode_np.load_caption(path)
    assert all(np.array_equal(got.weights[k], v) for k, v in want.items())
    assert arrayfile.cached_export(decode_np.EXPORT_KIND, path) is not None  # exported again, under the new key
