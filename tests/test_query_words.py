"""What a query's words become: inflected forms reach the word the model (or a class name) knows
(data/lemma.py), characters that make no word are reported, not dropped silently, errors stay one
short line, `per_word` counts on the bridge path too; and any text at all gives results or one clean
error line (hypothesis)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.bridge.query import make_query
from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import QueryError
from vsa_search.data.lemma import candidates, lemmatize
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.models.querytext import dropped, split_query

runner = CliRunner()
SHIPPED = paths.shipped_models_dir() / "align.pt"
COCO = paths.shared_dir() / "data" / "coco128" / "images"
WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "water", "run", "ride", "smile", "carry", "box",
         "stop", "dress", "pony", "knife", "child", "play", "dance", "lie"]


# --------------------------------------------------------------------------- the lemmatizer


@pytest.mark.parametrize("word, base", [
    ("dogs", "dog"), ("boxes", "box"), ("dresses", "dress"), ("ponies", "pony"), ("knives", "knife"),
    ("children", "child"), ("running", "run"), ("riding", "ride"), ("smiling", "smile"), ("playing", "play"),
    ("dancing", "dance"), ("lying", "lie"), ("stopped", "stop"), ("smiled", "smile"), ("carried", "carry"),
    ("played", "play"), ("men", "man"),
])
def test_inflected_forms_reach_their_base(word: str, base: str) -> None:
    assert lemmatize(word, set(WORDS)) == base


def test_lemmatizer_never_invents_or_rewrites_a_word() -> None:
    known = set(WORDS)
    assert lemmatize("dog", known) == "dog"  # a known word is its own answer
    assert lemmatize("grassy", known) is None and lemmatize("qqzxv", known) is None
    assert lemmatize("is", known) is None and lemmatize("bus", {"bu"}) is None  # too short, or -us
    for w in ["elephants", "running", "stopped", "ponies", "x", "ss", "ing", "eds"]:
        assert all(len(c) >= 2 and c != w for c in candidates(w))


# --------------------------------------------------------------------------- a plural in a real index


@pytest.fixture(scope="module")
def coco_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$VSA_HOME with an index of the first 16 coco128 photos (a zebra and an elephant among them),
    built with the shipped model."""
    if not SHIPPED.is_file():
        pytest.skip("needs the shipped weights/align.pt")
    if not COCO.is_dir():
        pytest.skip(f"needs the coco128 photos at {COCO}")
    home = tmp_path_factory.mktemp("coco")
    (home / "photos").mkdir()
    for p in sorted(COCO.glob("*.jpg"))[:16]:
        shutil.copy2(p, home / "photos" / p.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        ix.build([home / "photos"], None, SHIPPED)
    return home


def search_json(*args: str) -> dict:
    res = runner.invoke(app, ["search", *args, "--json"])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
def test_a_plural_ranks_as_its_singular(coco_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(coco_home))
    # "elephants" is outside the model's vocabulary, "elephant" in it: the same query to the model.
    plural = search_json("two elephants standing near water", "-k", "5")
    singular = search_json("two elephant standing near water", "-k", "5")
    assert plural["stand_ins"] == {"elephants": "elephant"} and "elephants" not in plural["bridged"]
    assert [h["path"] for h in plural["hits"]] == [h["path"] for h in singular["hits"]]
    assert [h["score"] for h in plural["hits"]] == [h["score"] for h in singular["hits"]]
    # "zebra" is a class name the model does not know: "zebras" reaches it through the bridge.
    zebras, zebra = search_json("zebras", "-k", "3"), search_json("zebra", "-k", "3")
    assert zebras["stand_ins"] == {"zebras": "zebra"}
    assert Path(zebras["hits"][0]["path"]).name == Path(zebra["hits"][0]["path"]).name == "000000000034.jpg"
    assert zebras["hits"][0]["score"] == zebra["hits"][0]["score"]
    text = runner.invoke(app, ["search", "zebras", "-k", "1"]).stdout
    assert "(inflected forms scored as their base word: zebras as zebra)" in text


# --------------------------------------------------------------------------- a tiny model's index


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "photos").mkdir()
    for p in sample_photos[:4]:
        shutil.copy2(p, home / "photos" / p.name)
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + WORDS)
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       home / "tiny.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        ix.build_photos([home / "photos"], load_align(model), None, encoder=tiny_region_encoder)
    return home


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VSA_HOME", str(home))
    return home


def test_an_emoji_is_reported_not_dropped_silently(env: Path) -> None:
    res = runner.invoke(app, ["search", "a dog 🐘 on the grass café", "-k", "1", "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["dropped"] == ["🐘", "é"] and out["words"][:2] == ["a", "dog"]
    assert res.stderr.strip() == "(not words, dropped: 🐘 é)"
    assert dropped("it's a T-shirt, 3.5 m!") == []  # punctuation only separates words, as documented


def test_a_query_of_emoji_alone_is_one_error_line(env: Path) -> None:
    res = runner.invoke(app, ["search", "🐘🦒"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip() == "error: empty query: 🐘🦒 are not words (a-z, 0-9): give some words to search for"


def test_an_error_does_not_repeat_a_huge_query(env: Path) -> None:
    huge = "qqzxv" * 40_000  # one 200 KB word nobody knows
    for args in (["search", huge], ["search", huge, "--no-bridge"], ["search", "qqzxv " + "🐘" * 50_000]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and len(lines[0]) < 400, lines[0][:500]


def test_per_word_sets_the_bridge_paths_first_stage(env: Path) -> None:
    loaded = load_align(env / "tiny.pt")
    with ix.open_index() as x:
        every = ix.search_words(x, loaded, "dog", k=4)
        assert every.candidates == len(x) and every.exact
        one = ix.search_words(x, loaded, "dog", k=4, per_word=1)
        assert one.per_word == 1 and not one.exact
        assert 1 <= one.candidates <= 2 < len(x)  # the word's top region, and its top region by the bridge
        assert [h.key for h in one.hits][0] in [h.key for h in every.hits]
        wide = ix.search_words(x, loaded, "dog", k=4, per_word=10_000)
        assert [h.key for h in wide.hits] == [h.key for h in every.hits]
        np.testing.assert_allclose([h.score for h in wide.hits], [h.score for h in every.hits], rtol=1e-6)
        with pytest.raises(QueryError):
            make_query(loaded, "🐘")


# --------------------------------------------------------------------------- any text at all

# Every unicode category (lone surrogates too: undecodable bytes of an argument), and long runs of words.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300) | st.lists(
    st.sampled_from(["dog", " ", "🐘", "é", "\x00", "\udcff", "-", "\n", "grass", "qqzxv", "s"]),
    max_size=1500).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=ANY_TEXT)
def test_any_text_gives_results_or_one_error_line(env: Path, text: str) -> None:
    for extra in ([], ["--no-bridge"], ["--json"]):
        res = runner.invoke(app, ["search", text, "-k", "2", *extra])
        assert "Traceback" not in res.stderr and res.exception is None or isinstance(res.exception, SystemExit)
        if res.exit_code == 0:
            if extra == ["--json"]:
                assert len(json.loads(res.stdout)["hits"]) == 2
        else:
            assert res.exit_code == 2 and res.stdout == ""
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 600


@settings(max_examples=200, deadline=None)
@given(text=ANY_TEXT)
def test_split_query_is_total(text: str) -> None:
    try:
        q = split_query(text)
    except QueryError as e:
        assert "\n" not in str(e) and len(str(e)) < 600
    else:
        assert q.tokens and all(t.isascii() and t.isalnum() and t == t.lower() for t in q.tokens)
        assert all(d and not d.isspace() for d in q.dropped)
