from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vsa_search.core.errors import ModelError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.text import tokenize
from vsa_search.data.vocab import END, PAD, START, UNK, Vocab, build_flickr8k_vocab

# Measured on the official train split with min_count 5: 2,535 words (the brief expected 2,537).
FLICKR8K_TRAIN_WORDS = 2535


@pytest.fixture(scope="module")
def vocab(flickr_root: Path) -> Vocab:
    return build_flickr8k_vocab(flickr_root)


@pytest.fixture(scope="module")
def split_counts(flickr_root: Path) -> dict[str, Counter[str]]:
    ds = load_flickr8k(flickr_root)
    return {
        s: Counter(t for r in ds.split(s) for c in r.sentences for t in tokenize(c))
        for s in ("train", "dev", "test")
    }


def test_special_ids() -> None:
    v = Vocab.build([["b", "a", "b"]], min_count=1)
    assert (PAD, UNK, START, END) == (0, 1, 2, 3)
    assert v.itos[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert v.itos[4:] == ["b", "a"]


def test_build_orders_by_count_then_alphabet_and_applies_min_count() -> None:
    lists = [["cat", "dog", "ant"], ["dog", "cat", "emu"], ["dog", "bee", "bee", "cat"]]
    v = Vocab.build(lists, min_count=2)
    assert v.itos[4:] == ["cat", "dog", "bee"]  # 3, 3 (alphabetical), 2; ant/emu seen once
    assert Vocab.build(reversed(lists), min_count=2) == v
    assert v.min_count == 2 and len(v) == 7


def test_flickr8k_vocab_size(vocab: Vocab, split_counts: dict[str, Counter[str]]) -> None:
    assert len(vocab) == FLICKR8K_TRAIN_WORDS + 4
    assert vocab.min_count == 5
    # Independent recount from the train captions only.
    assert set(vocab.itos[4:]) == {w for w, n in split_counts["train"].items() if n >= 5}
    assert vocab.itos[4] == "a"  # the most frequent word gets the first free id


def test_no_dev_or_test_only_words(vocab: Vocab, split_counts: dict[str, Counter[str]]) -> None:
    held_out = split_counts["dev"] + split_counts["test"]
    only_held_out = set(held_out) - set(split_counts["train"])
    assert len(only_held_out) > 100
    assert not only_held_out & set(vocab.itos)
    # "escalator" occurs 8 times in dev/test captions and never in train: a vocabulary built on
    # all text would include it.
    assert held_out["escalator"] >= 5 and split_counts["train"]["escalator"] == 0
    assert "escalator" not in vocab
    # Words rare in train stay out even where dev/test occurrences would push them over min_count.
    train = split_counts["train"]
    pushed = {w for w, n in held_out.items() if 0 < train[w] < 5 <= n + train[w]}
    assert pushed and not pushed & set(vocab.itos)


def test_encode_decode_round_trip(vocab: Vocab) -> None:
    sentence = "A black dog is running through the grass ."
    ids = vocab.encode_text(sentence)
    assert UNK not in ids and START not in ids and END not in ids
    assert vocab.decode(ids) == tokenize(sentence)
    assert vocab.decode([START, *ids, END, *vocab.encode(["cat"]), PAD]) == tokenize(sentence)
    assert vocab.decode([PAD, START, PAD]) == []


def test_unknown_words(vocab: Vocab) -> None:
    ids = vocab.encode(["dog", "zzyzxq", "escalator"])
    assert ids[1:] == [UNK, UNK] and ids[0] == vocab.stoi["dog"]
    assert vocab.decode(ids) == ["dog", "<unk>", "<unk>"]
    assert vocab.known(["dog", "zzyzxq"]) == [True, False]
    assert "dog" in vocab and "zzyzxq" not in vocab
    assert vocab.unk_rate([["dog", "zzyzxq"], ["dog", "dog"]]) == pytest.approx(0.25)
    assert vocab.unk_rate([]) == 0.0
    with pytest.raises(ModelError):
        vocab.decode([len(vocab)])


def test_test_split_unk_rate(vocab: Vocab, flickr_root: Path) -> None:
    test = load_flickr8k(flickr_root).split("test")
    rate = vocab.unk_rate(tokenize(s) for r in test for s in r.sentences)
    assert rate == pytest.approx(0.0304, abs=5e-4)  # measured: 1,652 of 54,334 tokens


def test_dict_round_trip(vocab: Vocab) -> None:
    d = json.loads(json.dumps(vocab.to_dict()))
    assert set(d) == {"itos", "min_count"}
    back = Vocab.from_dict(d)
    assert back == vocab and back.stoi == vocab.stoi and back.min_count == 5
    assert back.encode_text("two dogs play") == vocab.encode_text("two dogs play")


@pytest.mark.parametrize(
    "bad", [{}, [], {"itos": ["a", "b"], "min_count": 5}, {"itos": "abc", "min_count": 5}]
)
def test_from_dict_rejects_bad_records(bad: object) -> None:
    with pytest.raises(ModelError):
        Vocab.from_dict(bad)  # type: ignore[arg-type]
