"""Retrieval re-ranked by the caption generator: a sentence's log-probability under teacher forcing, the
generator's pointwise mutual information for annotation, and the re-ranking of each query's top candidates."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tests.tiny_align import TINY, tiny_captioner, tiny_model
from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.core.config import CAPTION_PRESETS
from vsa_search.core.errors import ModelError, UsageError
from vsa_search.data.vocab import END, PAD, START, pad_ids
from vsa_search.evaluation.generative import GeneratorTerms, generator_terms, reranked
from vsa_search.index import query
from vsa_search.models.alignment import load_align
from vsa_search.models.captioner import CaptionEnsemble, Captioner, load_caption, photo_input, save_caption
from vsa_search.models.likelihood import ANNOTATION_WEIGHT, mean_logprobs, sentence_logprobs
from vsa_search.train.generator_tune import tune_generator
from vsa_search.vision.regions import RegionEncoder

SENTENCES = ["a cup of coffee on a saucer", "a striped cat sitting down", "a brown horse outside",
             "a rocket launching into the sky", "many coins on a table", "a cat"]


def _teacher_forced(model: Captioner, feats: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
    """log P(tokens END | feats) from the generator's training forward pass (independent of step())."""
    targets, _ = pad_ids([t + [END] for t in tokens])
    inputs = torch.cat([torch.full((len(tokens), 1), START), targets[:, :-1]], 1)
    logp = F.log_softmax(model(feats, inputs), -1).gather(2, targets[..., None]).squeeze(2)
    return (logp * (targets != PAD)).sum(1)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, caption_vocab):
    return load_caption(tiny_captioner(tmp_path_factory.mktemp("gen") / "cap.pt", caption_vocab))


def test_logprobs_are_the_training_pass_in_any_batching(captioner) -> None:
    torch.manual_seed(0)
    feats = torch.randn(3, CAPTION_PRESETS["tiny"].feature_dim)
    tokens = [captioner.vocab.encode_text(s) for s in SENTENCES]
    photo = [0, 1, 2, 0, 1, 2]
    want = _teacher_forced(captioner.model, feats[photo], tokens)
    for batch in (1, 4, 512):  # pairs sorted by length, batched: the same figures in the input's order
        got = sentence_logprobs(captioner.model, feats, photo, tokens, batch=batch)
        assert torch.allclose(got, want, rtol=1e-5), (batch, got, want)
    assert (want < 0).all()


def test_an_ensemble_scores_the_mean_of_its_members_word_by_word(captioner, caption_vocab, tmp_path) -> None:
    other = load_caption(tiny_captioner(tmp_path / "b.pt", caption_vocab, seed=1))
    ens = CaptionEnsemble(dataclasses.replace(captioner.config, members=2), len(caption_vocab)).eval()
    ens.members[0].load_state_dict(captioner.model.state_dict())
    ens.members[1].load_state_dict(other.model.state_dict())
    feats = torch.randn(1, CAPTION_PRESETS["tiny"].feature_dim)
    words = caption_vocab.encode_text("a cat")
    want, states = 0.0, [m.model.init_state(feats) for m in (captioner, other)]
    for prev, nxt in zip([START, *words], [*words, END]):
        probs = []
        for i, m in enumerate((captioner, other)):
            logits, states[i] = m.model.step(torch.tensor([prev]), states[i])
            probs.append(F.softmax(logits, -1)[0, nxt].item())
        want += math.log(sum(probs) / 2)
    assert sentence_logprobs(ens, feats, [0], [words]).item() == pytest.approx(want, rel=1e-5)


def test_pmi_subtracts_the_mean_probability_over_the_prior_photos(captioner) -> None:
    torch.manual_seed(1)
    d = CAPTION_PRESETS["tiny"].feature_dim
    inputs, prior = torch.randn(4, d), torch.randn(3, d)
    scores = torch.randn(4, len(SENTENCES))
    terms = generator_terms(captioner, inputs, prior, SENTENCES, scores, depth=3)
    tokens = [captioner.vocab.encode_text(s) for s in SENTENCES]
    assert terms.sentences.tolist() == scores.topk(3, dim=1).indices.tolist()
    assert terms.photos.tolist() == scores.topk(3, dim=0).indices.T.tolist()
    for p in range(4):
        for c, s in enumerate(terms.sentences[p].tolist()):
            own = sentence_logprobs(captioner.model, inputs, [p], [tokens[s]])
            bank = sentence_logprobs(captioner.model, prior, [0, 1, 2], [tokens[s]] * 3)
            # a difference of two log-probabilities of the order of 100: float32's rounding scales with them
            assert terms.pmi[p, c].item() == pytest.approx(
                (own - (bank.logsumexp(0) - math.log(3))).item(), abs=1e-5 * (own.abs() + bank.abs().max()).item())
    for s in range(len(SENTENCES)):
        for c, p in enumerate(terms.photos[s].tolist()):
            own = sentence_logprobs(captioner.model, inputs, [p], [tokens[s]])
            assert terms.logp[s, c].item() == pytest.approx(own.item(), rel=1e-5)
    # without the search direction's terms its order stands; annotation's terms are the same
    ann_only = generator_terms(captioner, inputs, prior, SENTENCES, scores, depth=3, search=False)
    assert ann_only.photos.shape == (len(SENTENCES), 0) and torch.equal(ann_only.pmi, terms.pmi)
    ann, search = reranked(scores, ann_only, 0.5, 0.5)
    assert torch.equal(search, scores) and torch.equal(ann, reranked(scores, terms, 0.5, 0.5)[0])


def test_reranking_reorders_the_top_candidates_only() -> None:
    # 2 photos x 4 sentences; each query's top 2 are re-scored, the rest keep their order below them.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1],
                           [0.2, 0.3, 0.5, 0.6]])
    terms = GeneratorTerms(sentences=torch.tensor([[0, 1], [3, 2]]), pmi=torch.tensor([[-1.0, 1.0], [0.0, 0.0]]),
                           photos=torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]]),
                           logp=torch.tensor([[-5.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    ann, search = reranked(scores, terms, annotation_weight=0.2, search_weight=0.2)
    # photo 0: sentence 1 (0.8 + 0.2) now above sentence 0 (0.9 - 0.2); sentence 2 stays third, 3 last
    assert ann[0].argsort(descending=True).tolist() == [1, 0, 2, 3]
    assert ann[1].argsort(descending=True).tolist() == [3, 2, 1, 0]
    # sentence 0: photo 0 falls to 0.9 - 1.0 below photo 1's 0.2; the other sentences keep their order
    assert search[:, 0].argsort(descending=True).tolist() == [1, 0]
    assert search[:, 1:].argmax(0).tolist() == scores[:, 1:].argmax(0).tolist()
    # a weight of 0 is the alignment order
    ann0, search0 = reranked(scores, terms, 0.0, 0.0)
    assert ann0.argsort(1).tolist() == scores.argsort(1).tolist()
    assert search0.argsort(0).tolist() == scores.argsort(0).tolist()


def test_weights_are_never_chosen_on_test() -> None:
    with pytest.raises(UsageError, match="never on test"):
        tune_generator("align", "features", split="test")


def test_the_prior_photos_travel_in_the_model_file(captioner, tmp_path) -> None:
    assert captioner.prior is None
    torch.manual_seed(2)
    prior = torch.randn(5, 3, CAPTION_PRESETS["tiny"].feature_dim)
    prior[1, 2] = 0  # a short photo's padding row stays exactly zero (masked by an attending generator)
    path = save_caption(captioner.model, captioner.vocab, captioner.region_config, tmp_path / "p.pt", half=True,
                        prior=prior)
    got = load_caption(path).prior
    assert got.shape == prior.shape and (got[1, 2] == 0).all()
    step = (prior.amax(-1, keepdim=True) - prior.amin(-1, keepdim=True)) / 255
    assert ((got - prior).abs() <= step / 2 + 1e-3).all()
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["prior.step"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match="prior photos are incomplete"):
        load_caption(tmp_path / "broken.pt")


@pytest.fixture(scope="module")
def with_prior(captioner, tmp_path_factory):
    torch.manual_seed(3)
    prior = torch.randn(4, CAPTION_PRESETS["tiny"].feature_dim)
    return load_caption(save_caption(captioner.model, captioner.vocab, captioner.region_config,
                                     tmp_path_factory.mktemp("prior") / "gen.pt", prior=prior))


def test_a_photos_sentences_are_reranked_by_the_generator(tmp_path, with_prior, captioner, sample_photos) -> None:
    model = load_align(tiny_model(tmp_path / "align.pt"))
    caps = tmp_path / "s.txt"
    caps.write_text("\n".join(SENTENCES) + "\n")
    plain = ix.build_sentences([caps], model, tmp_path / "plain")
    with pytest.raises(UsageError, match="without prior photos"):
        ix.build_sentences([caps], model, tmp_path / "none", generator=captioner)
    ix.build_sentences([caps], model, tmp_path / "gen", generator=with_prior)
    encoder = RegionEncoder(TINY, "cpu")
    photo = sample_photos[0]
    with ix.open_index(tmp_path / "plain", "sentences") as x:
        assert query.generator_for(x) is None
        before = ix.search_photo(x, model, photo, k=plain.sentences, encoder=encoder)
    with ix.open_index(tmp_path / "gen", "sentences") as x:
        assert query.generator_for(x).path == with_prior.path
        after = ix.search_photo(x, model, photo, k=plain.sentences, encoder=encoder)
        stored = {x.record(i)["text"]: x.record(i)["prior"] for i in range(len(x))}
    texts = [h.text for h in before.hits]
    tokens = [with_prior.vocab.encode_text(t) for t in texts]
    prior = mean_logprobs(with_prior.model, with_prior.prior, tokens)
    assert [stored[t] for t in texts] == pytest.approx(prior.tolist(), abs=1e-4)
    x_in = photo_input(encoder.encode_photo(photo), with_prior.config)[None]
    lp = sentence_logprobs(with_prior.model, x_in, [0] * len(texts), tokens)
    want = {t: h.score + ANNOTATION_WEIGHT * (lp[i] - prior[i]).item() for i, (t, h) in enumerate(zip(texts,
                                                                                                    before.hits))}
    assert [h.text for h in after.hits] == sorted(want, key=want.get, reverse=True)
    assert [h.score for h in after.hits] == pytest.approx(sorted(want.values(), reverse=True), abs=1e-3)
    assert [h.text for h in after.hits] != texts  # the generator's term changed the order here


SHIPPED = Path(__file__).resolve().parent.parent / "weights"


@pytest.mark.skipif(not (SHIPPED / "caption-ensemble.pt").is_file(), reason="needs the shipped weights")
def test_search_image_reranks_with_the_shipped_generator(tmp_path, monkeypatch, sample_captions) -> None:
    """`vsa index text --generator caption-ensemble`, then `vsa search --image`: the shipped models, a real
    photo, the hand-written captions of the example photos; the hits are S' + w · PMI, best first."""
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    caps = tmp_path / "s.txt"
    caps.write_text("\n".join(c for cs in sample_captions.values() for c in cs) + "\n")
    run = CliRunner().invoke
    for name, extra in (("plain", []), ("gen", ["--generator", "caption-ensemble"])):
        r = run(app, ["index", "text", str(caps), "--index", name, *extra, "--json"])
        assert r.exit_code == 0, r.output
    photo = Path(__file__).resolve().parent.parent / "examples" / "photos" / "gravel.jpg"
    hits = {}
    for name, by in (("plain", None), ("gen", "caption-ensemble.pt")):
        r = run(app, ["search", "--image", str(photo), "--index", name, "-k", "30", "--json"])
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got.get("reranked_by") == by
        hits[name] = {h["text"]: h["score"] for h in got["hits"]}
    shown = run(app, ["search", "--image", str(photo), "--index", "gen", "-k", "3"]).stdout
    assert "(the top sentences re-ranked by the caption generator caption-ensemble.pt)" in shown
    assert set(hits["gen"]) == set(hits["plain"])
    gen = load_caption(SHIPPED / "caption-ensemble.pt")
    texts = list(hits["plain"])
    tokens = [gen.vocab.encode_text(t) for t in texts]
    x = photo_input(RegionEncoder(gen.region_config, "cpu").encode_photo(photo), gen.config)[None]
    pmi = sentence_logprobs(gen.model, x, [0] * len(texts), tokens) - mean_logprobs(gen.model, gen.prior, tokens)
    want = {t: hits["plain"][t] + ANNOTATION_WEIGHT * p for t, p in zip(texts, pmi.tolist())}
    assert list(hits["gen"]) == sorted(want, key=want.get, reverse=True)
    assert [hits["gen"][t] for t in hits["gen"]] == pytest.approx(sorted(want.values(), reverse=True), abs=2e-3)
    # and the generator's term is not idle on this photo: it reorders the alignment's top sentences
    assert list(hits["gen"])[:5] != list(hits["plain"])[:5]
