"""A small rule-based lemmatizer for query words: "elephants" -> "elephant", "running" -> "run",
"smiled" -> "smile". A model learns the forms its training captions use; a query in another
inflection of a known word should reach that word instead of being treated as unknown.

`candidates` proposes base forms by suffix rules (-s/-es/-ies/-ves, -ing, -ed, with doubled
consonants and a dropped final e) and a short list of irregular plurals; `lemmatize` accepts the
first candidate the vocabulary knows. It is only consulted for a word the vocabulary lacks, so a
known word is never rewritten, and it never invents a word: every answer is a vocabulary word."""

from __future__ import annotations

from collections.abc import Callable, Container

IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
             "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "sheep": "sheep",
             "fish": "fish", "deer": "deer", "dice": "die", "knives": "knife", "wives": "wife",
             "leaves": "leaf", "lives": "life", "wolves": "wolf", "halves": "half", "shelves": "shelf",
             "calves": "calf", "loaves": "loaf", "ran": "run", "sat": "sit", "stood": "stand",
             "swam": "swim", "rode": "ride", "threw": "throw", "thrown": "throw", "caught": "catch",
             "held": "hold", "flew": "fly", "ate": "eat", "eaten": "eat",
             "worn": "wear", "wore": "wear", "dug": "dig", "hung": "hang"}
VOWELS = frozenset("aeiou")
_MIN_STEM = 2  # "is" -> "i" or "red" -> "r" are not inflections


def _undouble(stem: str) -> str | None:
    """running -> runn -> run; never for ll/ss/zz-stems that are words as they stand (spelling rules
    double other consonants only)."""
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in VOWELS and stem[-1] not in "lsz":
        return stem[:-1]
    return None


def _verb_stems(stem: str) -> list[str]:
    """The bases a stem left by -ing or -ed may come from: as is, with a doubled consonant undone,
    with a final e restored."""
    out = []
    u = _undouble(stem)
    if u:
        out.append(u)
    # A short vowel before one final consonant would have doubled it ("ridding"), so "riding"
    # most likely drops an e: try "ride" before "rid".
    cvc = len(stem) >= 3 and stem[-1] not in VOWELS | {"w", "x", "y"} and stem[-2] in VOWELS \
        and stem[-3] not in VOWELS
    out += [stem + "e", stem] if cvc else [stem, stem + "e"]
    if u is None and len(stem) >= 3 and stem[-1] == stem[-2]:
        out.append(stem[:-1])  # "fill" + "ed" keeps its ll; "controlled" would have been caught above
    return out


def candidates(word: str) -> list[str]:
    """Possible base forms of `word`, most likely first (may include non-words)."""
    w = word.lower()
    out: list[str] = []
    if w in IRREGULAR:
        out.append(IRREGULAR[w])
    if w.endswith("ies") and len(w) > 4:
        out += [w[:-3] + "y", w[:-1]]  # ponies -> pony, ties -> tie
    if w.endswith("ves") and len(w) > 4:
        out += [w[:-3] + "f", w[:-3] + "fe"]
    if w.endswith("es") and len(w) > 3:
        # boxes -> box, dishes -> dish, tomatoes -> tomato; otherwise horses -> horse
        sibilant = w[:-2].endswith(("s", "x", "z", "ch", "sh", "o"))
        out += [w[:-2], w[:-1]] if sibilant else [w[:-1], w[:-2]]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        out.append(w[:-1])
    if w.endswith("ying") and len(w) == 5:
        out.append(w[:-4] + "ie")  # lying -> lie, tying -> tie (playing keeps its y below)
    if w.endswith("ing") and len(w) - 3 >= _MIN_STEM:
        out += _verb_stems(w[:-3])
    if w.endswith("ied") and len(w) > 4:
        out.append(w[:-3] + "y")  # carried -> carry
    if w.endswith("ed") and len(w) - 2 >= _MIN_STEM:
        out += _verb_stems(w[:-2])
    seen: dict[str, None] = {}
    for c in out:
        if len(c) >= _MIN_STEM and c != w:
            seen.setdefault(c, None)
    return list(seen)


def lemmatize(word: str, known: Container[str] | Callable[[str], bool]) -> str | None:
    """The base form of `word` that `known` (a vocabulary, or a test) contains, or None. A word
    that is itself known is its own answer."""
    has = known if callable(known) else known.__contains__
    if has(word):
        return word
    for c in candidates(word):
        if has(c):
            return c
    return None
