"""Open-vocabulary search and alignment: known words score as before plus the bridge, words outside
the model's vocabulary score by the bridge alone, words unknown to GloVe too are reported; the JSON
fields; one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.bridge import scores as BS
from vsa_search.bridge import words as BW
from vsa_search.bridge.align import align_unary
from vsa_search.bridge.query import make_query
from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import QueryError
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.index import openvocab
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.vision import concepts as C

runner = CliRunner()
WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "water"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + WORDS)
    return save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                      tmp_path_factory.mktemp("m") / "tiny.pt")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], model_path: Path) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "photos").mkdir()
    for p in sample_photos[:4]:
        shutil.copy2(p, home / "photos" / p.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        res = runner.invoke(app, ["index", "build", str(home / "photos"), "--model", str(model_path)])
    assert res.exit_code == 0, res.stderr
    return home


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VSA_HOME", str(home))
    return home


def test_index_stores_every_regions_concepts(env: Path) -> None:
    with ix.open_index() as x:
        blobs = x.concepts_bytes(range(len(x)))
        assert all(b is not None for b in blobs)
        con = [C.Concepts.from_bytes(b) for b in blobs]
        assert [len(c) for c in con] == x.count.tolist()
        assert all(c.ids.shape[1] == C.TOP_K for c in con)


def test_json_lists_bridged_and_unknown_words_and_how_each_word_matched(env: Path) -> None:
    res = runner.invoke(app, ["search", "a dog near the teddy qqzxv", "-k", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["query", "words", "ignored", "dropped", "stand_ins", "hits", "bridged", "bridge", "floor",
                         "below_floor"]
    assert out["words"] == ["a", "dog", "near", "the", "teddy"]  # every word anyone knows counts
    assert out["ignored"] == ["qqzxv"]  # unknown to the model and to GloVe: reported, not dropped silently
    assert out["bridged"] == ["near", "teddy"]  # outside the model's vocabulary: the bridge alone
    assert out["bridge"]["photos_without_concepts"] == 0 and out["bridge"]["weight"] > 0
    for h in out["hits"]:
        assert [w["word"] for w in h["words"]] == out["words"]
        for w in h["words"]:
            assert list(w) == ["word", "score", "region", "box", "via", "bridge", "concept"] and len(w["box"]) == 4
        via = {w["word"]: w["via"] for w in h["words"]}
        assert via["teddy"] == "bridge" and via["a"] == "model"
    text = runner.invoke(app, ["search", "a dog near the teddy qqzxv", "-k", "1"]).stdout.splitlines()
    assert text[0] == "(unknown to the model and to GloVe, not scored: qqzxv)"
    assert text[1] == "(outside the model's vocabulary, scored through the CNN's classes: near, teddy)"


def test_query_of_only_unknown_words_is_one_error_line(env: Path) -> None:
    res = runner.invoke(app, ["search", "qqzxv blorfq"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "error: no word of 'qqzxv blorfq' is known to the model's vocabulary or to GloVe (qqzxv, blorfq)"]


def test_a_word_outside_the_vocabulary_ranks_photos_by_its_class(env: Path, model_path: Path) -> None:
    """With the model's part equal for every photo (a query of one bridged word), the ranking is the
    bridge's: the photo whose best region is most probably that class comes first."""
    loaded = load_align(model_path)
    with ix.open_index() as x:
        ids, probs, _ = openvocab.index_concepts(x)
        top_class = int(ids[int(np.argmax(probs[:, 0])), 0])
        word = BW.class_names()[top_class][0].split()[-1].lower()
        res = openvocab.search_text(x, loaded, word, k=len(x))
        w = BW.word_weights([word])
        per_photo = [BS.bridge_scores_many(w, ids[a:a + n], probs[a:a + n]).max() for a, n in zip(x.first, x.count)]
        assert res.hits[0].key == x.record(int(np.argmax(per_photo)))["key"]
        assert res.bridged == [word] or word in loaded.vocab.stoi


def test_no_bridge_is_todays_search(env: Path, model_path: Path) -> None:
    from vsa_search.index import query as srch

    loaded = load_align(model_path)
    with ix.open_index() as x:
        old = srch.search_text(x, loaded, "a dog on the grass", k=3)
        new = openvocab.search_text(x, loaded, "a dog on the grass", k=3, with_bridge=False)
    assert [h.key for h in new.hits] == [h.key for h in old.hits]
    np.testing.assert_allclose([h.score for h in new.hits], [h.score for h in old.hits], rtol=1e-5)


def test_align_places_an_unknown_word_through_the_bridge(model_path: Path) -> None:
    loaded = load_align(model_path)
    con = C.Concepts(np.array([[0], [963], [0]], np.uint16), np.array([[0.0], [0.9], [0.0]], np.float16))
    tokens = ["a", "pizza", "qqzxv"]
    u, bridged, unknown = align_unary(loaded, tokens, np.zeros((3, 3), np.float32), con)
    assert bridged == ["pizza"] and unknown == ["qqzxv"]
    assert u[1].argmax() == 1 and u[1, 1] > 0


def test_make_query_reports_each_word(model_path: Path) -> None:
    loaded = load_align(model_path)
    q = make_query(loaded, "a dog near qqzxv")
    assert q.unknown == ["qqzxv"] and q.bridge_only == ["near"]
    assert q.q.shape[0] == 2  # the model's vectors of "a" and "dog"
    with pytest.raises(QueryError):
        make_query(loaded, "qqzxv")


def test_align_json_reports_bridged_and_unknown_words(model_path: Path, sample_photos: list[Path]) -> None:
    res = runner.invoke(app, ["align", str(sample_photos[0]), "a dog near a pizza qqzxv", "--json", "--no-index",
                              "--model", str(model_path)])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bridged"] == ["near", "pizza"] and out["unknown"] == ["qqzxv"]
    assert len(out["regions"]) == 6  # every word, the unknown one too, still has a region
