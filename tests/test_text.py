from __future__ import annotations

import pytest

from vsa_search.data.text import tokenize


@pytest.mark.parametrize(
    ("sentence", "tokens"),
    [
        ("A child in a pink dress .", ["a", "child", "in", "a", "pink", "dress"]),
        ("Two DOGS, running!", ["two", "dogs", "running"]),
        ("man's T-shirt", ["man", "s", "t", "shirt"]),
        ("3 kids play with 10-year-old dog", ["3", "kids", "play", "with", "10", "year", "old", "dog"]),
        ("route66 and a1", ["route66", "and", "a1"]),
        ("café\tnaïve\nline", ["caf", "na", "ve", "line"]),  # non-ASCII letters separate, like punctuation
        ("  ...  ", []),
        ("", []),
    ],
)
def test_tokenize(sentence: str, tokens: list[str]) -> None:
    assert tokenize(sentence) == tokens


def test_tokens_are_lowercase_alphanumeric_and_nonempty() -> None:
    toks = tokenize("Hello,, WORLD -- 42!? _under_score_")
    assert toks == ["hello", "world", "42", "under", "score"]
    assert all(t and t.isascii() and t.isalnum() and t == t.lower() for t in toks)
