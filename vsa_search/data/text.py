"""Sentence preprocessing, as in the paper: lowercase, keep only alphanumerics."""

from __future__ import annotations

import re

# Everything outside a-z0-9 (punctuation, apostrophes, accents, whitespace) separates tokens, so
# "man's" -> ["man", "s"] and "T-shirt" -> ["t", "shirt"], the same as Karpathy's preprocessing.
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(sentence: str) -> list[str]:
    """Lowercase `sentence` and split it into runs of [a-z0-9]; empty tokens never appear."""
    return _TOKEN.findall(sentence.lower())
