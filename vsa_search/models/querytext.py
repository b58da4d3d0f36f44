"""A query as search sees it: its words, what was not a word (reported, never dropped silently),
the stand-ins for inflected forms the model does not know, and the word vectors of the numpy
text encoder (textenc.py), the one text path of every search."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import QueryError
from ..data.lemma import lemmatize
from ..data.text import tokenize
from ..data.vocab import UNK
from .textenc import query_encoder

# The recurrent sentence encoder's state overflows past ~1,400 words (NaN vectors, and every
# score with them), so a query is held well below that rather than answered with nothing.
MAX_QUERY_WORDS = 1000
_NOT_WORD = re.compile(r"[^a-z0-9\s]+")


def short(text: str, n: int = 60) -> str:
    """`text` quoted for a one-line message, cut to about n characters (a query may be megabytes)."""
    t = text.strip()
    return repr(t if len(t) <= n else t[:n] + "...") + (f" ({len(t):,} characters)" if len(t) > n else "")


def printable(s: str) -> str:
    """`s` safe to write to any console: lone surrogates (undecodable bytes of an argument) escaped."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _separator(ch: str) -> bool:
    """Characters that merely separate words, as documented for the tokenizer: ASCII punctuation,
    and any punctuation, space or control character."""
    return ch.isascii() or unicodedata.category(ch)[0] in "PZ" or unicodedata.category(ch) == "Cc"


def dropped(text: str) -> list[str]:
    """What tokenize() drops that is not a separator: runs of characters outside a-z0-9 such as
    emoji, accented or non-Latin letters, symbols ("é" of "café", "🐘"), in order, each once."""
    out: dict[str, None] = {}
    for run in _NOT_WORD.findall(text.lower()):
        cur = ""
        for ch in run + " ":
            if _separator(ch):
                if cur:
                    out.setdefault(cur, None)
                cur = ""
            else:
                cur += ch
    return list(out)


@dataclass
class QueryWords:
    tokens: list[str]
    dropped: list[str]


def split_query(text: str) -> QueryWords:
    """A query's tokens and dropped characters; a query without words, or too long, is one clean error."""
    tokens = tokenize(text)
    lost = dropped(text)
    if not tokens:
        what = f": {', '.join(printable(d) for d in lost[:10])} are not words (a-z, 0-9)" if lost else ""
        raise QueryError(f"empty query{what}: give some words to search for")
    if len(tokens) > MAX_QUERY_WORDS:
        raise QueryError(f"the query has {len(tokens)} words; at most {MAX_QUERY_WORDS} are scored: shorten it")
    return QueryWords(tokens, lost)


def query_tokens_or_fail(text: str) -> list[str]:
    return split_query(text).tokens


@dataclass
class EncodedQuery:
    tokens: list[str]  # as typed (lowercased)
    dropped: list[str]  # characters that are no word (split_query)
    ids: list[int]  # model word ids, the stand-in's where a token has one; UNK where unknown
    stand_ins: dict[str, str]  # token -> the vocabulary word that stood in for it ("elephants" -> "elephant")
    vectors: np.ndarray  # (T, out_dim) every token's s_t (an UNK token's is context only)

    @property
    def known(self) -> np.ndarray:
        return np.array([i != UNK for i in self.ids])

    def model_word(self, t: int) -> str:
        return self.stand_ins.get(self.tokens[t], self.tokens[t])


def model_ids(vocab: Any, tokens: list[str]) -> tuple[list[int], dict[str, str]]:
    """Word ids of `tokens`: a word outside the vocabulary whose base form is in it
    ("elephants", "running") takes that form's id. Returns (ids, {token: stand-in})."""
    ids, stand = [], {}
    for t in tokens:
        i = vocab.stoi.get(t, UNK)
        if i == UNK:
            base = lemmatize(t, vocab.stoi)
            if base is not None:
                i = vocab.stoi[base]
                stand[t] = base
        ids.append(i)
    return ids, stand


def encode_query(model: Any, text: str) -> EncodedQuery:
    """`text` through the numpy text encoder of `model` (a TextEncoder or a LoadedAlign)."""
    qw = split_query(text)
    enc = query_encoder(model)
    ids, stand = model_ids(enc.vocab, qw.tokens)
    s = enc.encode_ids(ids)
    known = [i for i, w in enumerate(ids) if w != UNK]
    if not np.isfinite(s[known]).all():
        raise QueryError(f"the query's {len(qw.tokens)} words overflow the sentence encoder: shorten it")
    return EncodedQuery(qw.tokens, qw.dropped, ids, stand, s)


def query_vectors(model: Any, text: str) -> tuple[list[str], list[str], np.ndarray]:
    """(scored words, ignored words, s (T, h) float32). Unknown words still reach the sentence
    encoder as <unk> (they are context for their neighbours) but get no vector of their own."""
    return known_words(encode_query(model, text), text)


def known_words(eq: EncodedQuery, text: str) -> tuple[list[str], list[str], np.ndarray]:
    """(the words the model scores, the others, their vectors (T_known, h)); none known is an error."""
    known = eq.known
    if not known.any():
        raise QueryError(f"no known words in the query {short(text)}: the model's vocabulary has none of "
                         f"{_listing(eq.tokens)}")
    return [w for w, k in zip(eq.tokens, known) if k], [w for w, k in zip(eq.tokens, known) if not k], \
        eq.vectors[known]


def _listing(words: list[str], n: int = 10) -> str:
    cut = [w if len(w) <= 30 else w[:30] + "..." for w in words[:n]]
    return ", ".join(cut) + (f" and {len(words) - n} more" if len(words) > n else "")
