"""Words to ImageNet classes: the bridge's word side (ConSE / DeViSE style).

A query word w reaches a region through the region's top K classes (vision/concepts.py):

    bridge(w, region) = Σ_{c in region's top K} p(c) · sharp(sim(w, c))          (scores.py)

sim(w, c) is 1 when w is one of class c's names, `HEAD_MATCH` when w is the last word of a
multi-word name ("bear" in "brown bear"), `DEFINITION_MATCH` when w opens the class's WordNet
gloss (the genus: "tabby: a cat with ..."), and otherwise the best GloVe cosine between w and
the class's names (each name the mean of its words' vectors), capped at `COSINE_CAP`. sharp() zeroes cosines below
`tau` and rescales the rest to [0, 1] with a power, because 50-d GloVe puts unrelated words at
cosine 0.5-0.8 ("a"-"man" 0.81); function words never bridge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.text import tokenize
from ..vision.concepts import TOP_K
from .table import STOPWORDS, table

HEAD_MATCH = 0.95
DEFINITION_MATCH = 0.85  # w is among the first words of the class's WordNet gloss ("a cat with a grey ...")
COSINE_CAP = 0.9  # a mere GloVe neighbour never counts as much as a name or the gloss's noun


@dataclass(frozen=True)
class BridgeConfig:
    """How query words reach regions through class names. `weight` scales the bridge against the
    alignment model's own word-region score (per word, before the model's mean over words). A model
    file's metrics may carry its own ("bridge_weight", written by `benchmarks/coco128.py --tune
    --write-weight`), which wins; this default is the shipped weights/align.pt's, tuned on Flickr8k
    dev (first 200 photos, 1,000 sentences): mean Recall@K 43.2 / 43.4 / 43.7 / 44.5 / 45.4 / 46.1 at
    weights 0 / 0.2 / 0.5 / 1 / 2 / 4."""

    weight: float = 4.0
    tau: float = 0.65  # cosine below which a class contributes nothing
    power: float = 2.0
    top_k: int = TOP_K


DEFAULT_BRIDGE = BridgeConfig()


# --------------------------------------------------------------------------- class names


def class_names() -> tuple[tuple[str, ...], ...]:
    """The 1,000 ImageNet classes, each as its synonyms ("brown bear", "bruin", "Ursus arctos"),
    from timm's bundled ImageNet info (offline), through the bridge's table (table.py)."""
    return table().classes


def class_word(word: str) -> str | None:
    """`word` when a class name is or ends in it ("bear" of "brown bear"), else its base form when
    that is one ("zebras" -> "zebra", data/lemma.py), else None."""
    from ..data.lemma import lemmatize

    tab = table()
    return lemmatize(word, lambda w: w in tab.exact or w in tab.head)


def display_name(c: int) -> str:
    """A class's first name, lowercase ("teddy" for "teddy, teddy bear" reads worse than the
    two-word synonym, so a multi-word synonym containing the first name wins)."""
    names = class_names()[c]
    first = names[0].lower()
    for n in names[1:]:
        if first in tokenize(n) and len(tokenize(n)) > 1:
            return " ".join(tokenize(n))
    return " ".join(tokenize(first))


def glove(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit GloVe vectors (W, 50) of `words` and a mask of those GloVe knows (zeros elsewhere)."""
    tab = table()
    emb = tab.emb
    out = np.zeros((len(words), emb.shape[1]), np.float32)
    known = np.zeros(len(words), bool)
    for j, w in enumerate(words):
        i = tab.row(w)
        if i is not None:
            v = np.asarray(emb[i], np.float32)
            out[j] = v / max(float(np.linalg.norm(v)), 1e-8)
            known[j] = True
    return out, known


def in_glove(word: str) -> bool:
    return table().row(word) is not None


def _definition_words() -> dict[str, list[int]]:
    """word -> classes whose gloss (timm's bundled WordNet definitions) names it early on."""
    return table().gloss


def _forms(word: str) -> list[str]:
    """The word and its plain plural (glosses say "fishes", queries "fish")."""
    return [word, word + "s", word + "es"]


def _name_table() -> tuple[np.ndarray, np.ndarray, dict[str, list[int]], dict[str, list[int]]]:
    """Unit vectors of every class name (mean of its words' GloVe vectors), the class of each,
    and exact-name and head-word lookups (word -> classes)."""
    tab = table()
    return tab.names, tab.owner, tab.exact, tab.head


def word_class_sim(words: list[str]) -> np.ndarray:
    """sim(w, c) of each word against each class: (W, 1000) in [-1, 1]; 0 for words GloVe does not know."""
    vecs, owner, exact, head = _name_table()
    g, known = glove(words)
    cos = g @ vecs.T  # (W, names)
    sim = np.full((len(words), len(class_names())), -1.0, np.float32)
    for j in range(len(words)):
        np.maximum.at(sim[j], owner, cos[j])
    np.minimum(sim, COSINE_CAP, out=sim)
    sim[~known] = 0.0
    gloss = _definition_words()
    for j, w in enumerate(words):
        for form in _forms(w):
            for c in gloss.get(form, ()):
                sim[j, c] = max(sim[j, c], DEFINITION_MATCH)
        for c in head.get(w, ()):
            sim[j, c] = max(sim[j, c], HEAD_MATCH)
        for c in exact.get(w, ()):
            sim[j, c] = 1.0
    return sim


def sharpen(sim: np.ndarray, cfg: BridgeConfig = DEFAULT_BRIDGE) -> np.ndarray:
    return (np.clip((sim - cfg.tau) / (1.0 - cfg.tau), 0.0, 1.0) ** cfg.power).astype(np.float32)


def word_weights(words: list[str], cfg: BridgeConfig = DEFAULT_BRIDGE) -> np.ndarray:
    """sharp(sim(w, c)) (W, 1000): what each class gives each word; all zero for function words."""
    w = sharpen(word_class_sim(words), cfg)
    for j, word in enumerate(words):
        if word in STOPWORDS:
            w[j] = 0.0
    return w
