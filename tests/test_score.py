"""Every path that scores photos against words gives the scoring module's S_kl (models/score.py) on
the same inputs: the numpy and torch forms of the module agree, and an index's scores, the two-stage
and exhaustive search, open-vocabulary search (the bridge inside the max), likeness with steering
words, image -> text search, evaluation's score_all and scores_with_bridge and the querybank
offsets all equal score.score() of the same vectors (the shipped model on example photos, and on
cached Flickr8k features where present)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vsa_search import index as ix
from vsa_search.bridge.query import make_query
from vsa_search.bridge.words import DEFAULT_BRIDGE, word_weights
from vsa_search.core import paths
from vsa_search.index import likeness, openvocab, query, sentences
from vsa_search.models import score as S
from vsa_search.models.alignment import load_align
from vsa_search.models.encode import query_vectors
from vsa_search.models.querybank import photo_offsets, sentence_offsets

SHIPPED = paths.REPO_ROOT / "weights" / "align.pt"
EXAMPLES = paths.REPO_ROOT / "examples" / "photos"
PHOTOS = ["chelsea-cat.jpg", "coffee.jpg", "horse.jpg", "astronaut.jpg"]


def padded(vectors: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged (R_i, h) items -> v (C, R_max, h), region_mask (C, R_max): score()'s padded form."""
    r = max(len(v) for v in vectors)
    v = torch.zeros(len(vectors), r, vectors[0].shape[1])
    mask = torch.zeros(len(vectors), r, dtype=torch.bool)
    for i, x in enumerate(vectors):
        v[i, :len(x)] = torch.from_numpy(np.asarray(x, np.float32))
        mask[i, :len(x)] = True
    return v, mask


def reference(vectors: list[np.ndarray], q: np.ndarray) -> np.ndarray:
    """S_kl of each item against one sentence of word vectors q (T, h), by score.score()."""
    v, mask = padded(vectors)
    s = torch.from_numpy(np.asarray(q, np.float32))[None]
    return S.score(v, mask, s, torch.ones(1, len(q), dtype=torch.bool))[:, 0].numpy()


# --------------------------------------------------------------------------- the module's own forms


@pytest.mark.parametrize("shared", [0, 3])
def test_numpy_and_torch_forms_are_one_score(shared: int) -> None:
    """Items one after another (numpy, the index's layout), padded batches and flat words (torch),
    sentences one after another (image -> text): the same S_kl, with or without a shared part."""
    rng = np.random.default_rng(shared)
    counts = [3, 5, 1, 4]
    items = [rng.normal(size=(r, 8)).astype(np.float32) for r in counts]
    for v in items:
        v[:, 8 - shared:] = v[:1, 8 - shared:]  # a hybrid's global part: the same in every region
    q = rng.normal(size=(6, 8)).astype(np.float32)
    want = reference(items, q)
    dots = q @ np.concatenate(items).T
    got, best = S.item_scores(dots, S.starts_of(counts))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert best.shape == (6, 4)
    # The hybrid split: the own parts' max plus u·g_t per word.
    q_own, q_sh = S.split(q, shared)
    own = np.concatenate([S.split(v, shared)[0] for v in items])
    sh = np.stack([S.split(v[0], shared)[1] for v in items]) @ q_sh.T  # (C, T)
    np.testing.assert_allclose(S.item_scores(q_own @ own.T, S.starts_of(counts), sh.T)[0], want, rtol=1e-5, atol=1e-5)
    # The words as the ragged axis: one item against each sentence.
    lengths = np.array([2, 1, 3])
    sents = np.split(q, np.cumsum(lengths)[:-1])
    got_s = S.sentence_scores(q @ items[1].T, S.starts_of(lengths))
    np.testing.assert_allclose(got_s, [reference([items[1]], s)[0] for s in sents], rtol=1e-5, atol=1e-5)
    # Flat words (torch): score_words against the padded score, the word mask from the lengths.
    s = torch.zeros(3, 3, 8)
    for j, x in enumerate(sents):
        s[j, :len(x)] = torch.from_numpy(x)
    wm = S.word_mask(torch.from_numpy(lengths), 3)
    assert wm.tolist() == S.word_mask(lengths, 3).tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    v, mask = padded(items)
    words, sent = S.flat_words(s, wm)
    np.testing.assert_allclose(S.score_words(v, mask, words, sent, 3, shared).numpy(),
                               S.score(v, mask, s, wm).numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the shipped model on example photos


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):
    """(the shipped model, an index of four example photos built with it, the sentence index of a few
    sentences)."""
    if not SHIPPED.is_file():
        pytest.skip("needs the shipped weights/align.pt")
    home = tmp_path_factory.mktemp("score")
    (home / "photos").mkdir()
    for p in PHOTOS:
        shutil.copy2(EXAMPLES / p, home / "photos" / p)
    (home / "s.txt").write_text("a cat on a red carpet\na cup of coffee\na horse in a field\n"
                                "a woman in a white suit\nthe brown horse eats grass\n")
    model = load_align(SHIPPED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        ix.build_photos([home / "photos"], model, "score")
        sentences.build_sentences([home / "s.txt"], model, "score-text")
    with ix.open_index(home / "indexes" / "score") as photos, \
            ix.open_index(home / "indexes" / "score-text", kind="sentences") as text:
        yield model, photos, text


def test_index_paths_are_the_modules_score(shipped) -> None:
    model, x, _ = shipped
    words, _, q = query_vectors(model, "a tabby cat sitting on a red carpet")
    items = np.arange(len(x))
    want = reference(x.vectors(items), q)  # before querybank offsets
    np.testing.assert_allclose(x.scores(q, items)[0], want, rtol=1e-5, atol=1e-5)  # store: the hybrid split
    every = query.two_stage(x, q, len(x))  # flat: every photo scored in one scan
    np.testing.assert_allclose(every.scores, (want - x.offsets)[every.items], rtol=1e-5, atol=1e-5)
    found = query.two_stage(x, q, len(x), per_word=8)  # first stage, then the exact re-rank
    np.testing.assert_allclose(found.scores, (want - x.offsets)[found.items], rtol=1e-5, atol=1e-5)
    top, top_scores = query.exhaustive(x, q, len(x))
    np.testing.assert_allclose(top_scores, (want - x.offsets)[top], rtol=1e-5, atol=1e-5)
    res = query.search_text(x, model, "a tabby cat sitting on a red carpet", k=len(x))
    keys = [x.record(int(i))["key"] for i in items]
    np.testing.assert_allclose([h.score for h in res.hits], [(want - x.offsets)[keys.index(h.key)] for h in res.hits],
                               rtol=1e-5, atol=1e-5)
    plain = openvocab.search_text(x, model, "a tabby cat sitting on a red carpet", k=len(x), with_bridge=False)
    assert [h.key for h in plain.hits] == [h.key for h in res.hits]
    np.testing.assert_allclose([h.score for h in plain.hits], [h.score for h in res.hits], rtol=1e-5, atol=1e-5)


def test_open_vocabulary_search_is_the_modules_score_with_the_bridge_inside_the_max(shipped) -> None:
    """bridge(t, i) = Σ_k p_ik · w_t[c_ik] is a dot of the region's class probabilities P_i with the
    word's class weights, so the open-vocabulary score is score() of v'_i = [v_i ; P_i] and
    s'_t = [s_t ; scale · w_t] (s_t = 0 for a word only the bridge knows)."""
    model, x, _ = shipped
    text = "a zebra and a tabby cat on a carpet"  # "zebra" is outside the model's vocabulary
    qr = make_query(model, text, DEFAULT_BRIDGE)
    assert qr.bridge_only and qr.model_known.any()
    ids, probs, missing = openvocab.index_concepts(x)
    assert not missing.any()
    dense = np.zeros((x.fragments, qr.weights.shape[1]), np.float32)
    np.add.at(dense, (np.arange(x.fragments)[:, None], ids.astype(np.int64)), probs.astype(np.float32))
    vecs = x.vectors(np.arange(len(x)))
    aug = [np.hstack([v, dense[a:a + len(v)]]) for v, a in zip(vecs, x.first)]
    s = np.zeros((len(qr.tokens), x.dim + qr.weights.shape[1]), np.float32)
    s[qr.model_known, :x.dim] = qr.q
    s[:, x.dim:] = qr.scale * qr.weights
    want = reference(aug, s) - x.offsets
    res = openvocab.search_text(x, model, text, k=len(x), cfg=DEFAULT_BRIDGE)
    keys = [x.record(i)["key"] for i in range(len(x))]
    np.testing.assert_allclose([h.score for h in res.hits], [want[keys.index(h.key)] for h in res.hits],
                               rtol=1e-5, atol=1e-5)


def test_likeness_and_image_to_text_are_the_modules_score(shipped) -> None:
    model, x, text = shipped
    words, _, q = query_vectors(model, "grass")
    res = likeness.search_like(x, model, 2, "grass", k=len(x))  # photo 2 (horse) steered by a word
    vecs = x.vectors(np.arange(len(x)))
    qv = vecs[2]
    # S(Q, P) = 1/R_Q Σ_i max_j v_i·v_j: score() with the query photo's regions as words, each 1/R_Q.
    like = reference(vecs, qv / len(qv))
    want = like + reference(vecs, q) - x.offsets
    keys = [x.record(i)["key"] for i in range(len(x))]
    assert len(res.hits) == len(x) - 1  # the query photo is left out
    np.testing.assert_allclose([h.score for h in res.hits], [want[keys.index(h.key)] for h in res.hits],
                               rtol=1e-5, atol=1e-5)
    got = query.search_image(text, model, EXAMPLES / "horse.jpg", k=len(text))
    _, v = query.photo_regions(model, EXAMPLES / "horse.jpg")
    recs = [text.record(i) for i in range(len(text))]
    want_t = {r["key"]: reference([v], s)[0] - text.offsets[i] for i, (r, s) in enumerate(zip(recs, text.vectors(
        np.arange(len(text)))))}
    assert len(got.hits) == len(text)
    np.testing.assert_allclose([h.score for h in got.hits], [want_t[h.key] for h in got.hits], rtol=1e-5, atol=1e-5)


def test_querybank_offsets_are_log_sum_exp_of_the_modules_score(shipped) -> None:
    model, x, _ = shipped
    bank = model.querybank
    m = model.model
    with torch.no_grad():
        v = m.encode_regions(torch.from_numpy(np.zeros((2, 3, model.region_config.feature_dim), np.float32)) + 0.1)
        mask = torch.ones(2, 3, dtype=torch.bool)
        sb = m.encode_words(bank.sent_ids, bank.sent_lengths)
        sc = S.score(v, mask, sb, S.word_mask(bank.sent_lengths, bank.sent_ids.shape[1]))  # (2, K)
        want = bank.weight * torch.logsumexp(bank.beta * sc, 1) / bank.beta
        np.testing.assert_allclose(photo_offsets(m, bank, v, mask).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
        vb, bmask = bank.regions(m, "cpu")
        s = sb[:3]
        wm = S.word_mask(bank.sent_lengths[:3], bank.sent_ids.shape[1])
        want_s = bank.weight * torch.logsumexp(bank.beta * S.score(vb, bmask, s, wm), 0) / bank.beta
        np.testing.assert_allclose(sentence_offsets(m, bank, s, wm).numpy(), want_s.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- evaluation on cached features


@pytest.fixture(scope="module")
def dev_data():
    """The shipped model and 12 Flickr8k dev photos' cached features with their 60 sentences."""
    from vsa_search.data.datasets import load_flickr8k
    from vsa_search.evaluation.recall import retrieval_data
    from vsa_search.vision.features import FeatureStore

    if not SHIPPED.is_file():
        pytest.skip("needs the shipped weights/align.pt")
    model = load_align(SHIPPED)
    store_dir = paths.cache_dir() / "features" / model.region_config.extractor_id()
    if not store_dir.is_dir():
        pytest.skip(f"needs the cached Flickr8k features at {store_dir}")
    try:
        records = load_flickr8k().present("dev")
    except Exception as e:  # no shared data: skip with the reason
        pytest.skip(f"needs Flickr8k: {e}")
    with FeatureStore(store_dir, readonly=True) as store:
        records = [r for r in records if r.image_id in store][:12]
        data = retrieval_data(records, store, model.vocab)
    return model, data


def test_evaluation_scores_are_the_modules_score(dev_data) -> None:
    from vsa_search.evaluation import openvocab as openvocab_eval
    from vsa_search.evaluation.recall import score_all
    from vsa_search.vision.concepts import region_probs, topk

    model, data = dev_data
    m = model.model
    with torch.no_grad():
        v = m.encode_regions(data.feats)
        s = m.encode_words(data.ids, data.lengths)
        want = S.score(v, data.region_mask[:, :v.shape[1]], s, S.word_mask(data.lengths, data.ids.shape[1]))
    np.testing.assert_allclose(score_all(m, data, chunk=5).numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    got = openvocab_eval.scores_with_bridge(m, data, (0.0, 4.0), chunk=5)
    np.testing.assert_allclose(got[0.0].numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    # With weight w the bridge sits inside the max: score() of [v_i ; P_i] and [s_t ; w/T · w_t].
    from vsa_search.data.text import tokenize

    n, r, d = data.feats.shape
    ids, probs = topk(region_probs(data.feats.reshape(-1, d).numpy(), model.region_config.backbone))
    dense = np.zeros((n * r, 1000), np.float32)
    np.add.at(dense, (np.arange(n * r)[:, None], ids.astype(np.int64)), probs.astype(np.float32))
    dense = torch.from_numpy(dense.reshape(n, r, 1000)[:, :v.shape[1]])
    tw = torch.zeros(len(data.sentences), data.ids.shape[1], 1000)
    for j, sent in enumerate(data.sentences):
        toks = tokenize(sent)[: data.ids.shape[1]]
        if toks:
            tw[j, :len(toks)] = torch.from_numpy(word_weights(toks)) * 4.0 / float(data.lengths[j].clamp(min=1))
    with torch.no_grad():
        want_b = S.score(torch.cat([v, dense], -1), data.region_mask[:, :v.shape[1]], torch.cat([s, tw], -1),
                         S.word_mask(data.lengths, data.ids.shape[1]))
    np.testing.assert_allclose(got[4.0].numpy(), want_b.numpy(), rtol=1e-4, atol=1e-4)
