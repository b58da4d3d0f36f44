"""Region concepts and the word <-> class bridge.

The CNN that features every region is an ImageNet classifier: a region feature (RoIAlign of
`forward_features`' map) is exactly what the backbone's classifier head reads, so a region's
class probabilities are softmax(head(feature)), derivable from stored features at any time.
Per region only the top K classes are kept (ids uint16, probabilities float16).

The bridge (ConSE / DeViSE style) scores a query word w against a region:

    bridge(w, region) = Σ_{c in region's top K} p(c) · sharp(sim(w, c))

sim(w, c) is 1 when w is one of class c's names, `HEAD_MATCH` when w is the last word of a
multi-word name ("bear" in "brown bear"), `DEFINITION_MATCH` when w opens the class's WordNet
gloss (the genus: "tabby: a cat with ..."), and otherwise the best GloVe cosine between w and
the class's names (each name the mean of its words' vectors), capped at `COSINE_CAP`. sharp() zeroes cosines below
`tau` and rescales the rest to [0, 1] with a power, because 50-d GloVe puts unrelated words at
cosine 0.5-0.8 ("a"-"man" 0.81); function words never bridge."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.text import tokenize
from .bridge_table import table

if TYPE_CHECKING:  # torch only for the classifier head (index builds): search needs none
    import torch

TOP_K = 10  # classes kept per region: 40 bytes per region (see topk_bytes)
HEAD_MATCH = 0.95
DEFINITION_MATCH = 0.85  # w is among the first words of the class's WordNet gloss ("a cat with a grey ...")
COSINE_CAP = 0.9  # a mere GloVe neighbour never counts as much as a name or the gloss's noun
# Function words: GloVe puts them close to everything, and no photo region is "the".
STOPWORDS = frozenset(
    "a an the of in on at to and or with without is are was were be been being it its this that these "
    "those there here his her their them they he she we you i my our your from by for as into onto over "
    "under up down out off near next while some one two three four five several many few very".split())


@dataclass(frozen=True)
class BridgeConfig:
    """How query words reach regions through class names. `weight` scales the bridge against the
    alignment model's own word-region score (per word, before the model's mean over words). A model
    file's metrics may carry its own ("bridge_weight", written by `benchmarks/coco128.py --tune
    --write-weight`), which wins; this default is the shipped models/align.pt's, tuned on Flickr8k
    dev (first 200 photos, 1,000 sentences): mean Recall@K 43.2 / 43.4 / 43.7 / 44.5 / 45.4 / 46.1 at
    weights 0 / 0.2 / 0.5 / 1 / 2 / 4."""

    weight: float = 4.0
    tau: float = 0.65  # cosine below which a class contributes nothing
    power: float = 2.0
    top_k: int = TOP_K


DEFAULT_BRIDGE = BridgeConfig()


def bridge_weight(model: Any, cfg: BridgeConfig | None = None) -> float:
    """The weight to use with a loaded alignment `model`: cfg's if given, else the one tuned for this
    model (stored in its file's metrics as "bridge_weight"), else the default."""
    if cfg is not None:
        return cfg.weight
    return float(model.metrics.get("bridge_weight", DEFAULT_BRIDGE.weight)) if model.metrics else DEFAULT_BRIDGE.weight


# --------------------------------------------------------------------------- class names


def class_names() -> tuple[tuple[str, ...], ...]:
    """The 1,000 ImageNet classes, each as its synonyms ("brown bear", "bruin", "Ursus arctos"),
    from timm's bundled ImageNet info (offline), through the bridge's table (bridge_table.py)."""
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


# --------------------------------------------------------------------------- region class probabilities


@functools.lru_cache(maxsize=4)
def _head(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    from .regions import load_backbone

    fc = load_backbone(backbone).get_classifier()
    return fc.weight.detach().float().clone(), fc.bias.detach().float().clone()


def region_probs(features: np.ndarray, backbone: str = "tf_efficientnet_lite0") -> np.ndarray:
    """(R, D) region features -> (R, 1000) ImageNet class probabilities from the backbone's own head."""
    import torch

    w, b = _head(backbone)
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    with torch.inference_mode():
        return torch.softmax(x @ w.T + b, dim=-1).numpy()


def topk(probs: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per region: ids (R, k) uint16 and probabilities (R, k) float16,
    most probable first."""
    k = min(k, probs.shape[1])
    ids = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    p = np.take_along_axis(probs, ids, 1)
    order = np.argsort(-p, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1).astype(np.uint16), np.take_along_axis(p, order, 1).astype(np.float16)


@dataclass
class Concepts:
    """One photo's regions' top classes."""

    ids: np.ndarray  # (R, K) uint16
    probs: np.ndarray  # (R, K) float16

    def to_bytes(self) -> bytes:
        """4-byte header (R, K as uint16), then ids, then probabilities: 4·K bytes per region."""
        r, k = self.ids.shape
        return struct.pack("<HH", r, k) + np.ascontiguousarray(self.ids, "<u2").tobytes() \
            + np.ascontiguousarray(self.probs, "<f2").tobytes()

    @classmethod
    def from_bytes(cls, b: bytes) -> Concepts:
        r, k = struct.unpack_from("<HH", b)
        n = r * k
        ids = np.frombuffer(b, "<u2", n, 4).reshape(r, k)
        probs = np.frombuffer(b, "<f2", n, 4 + 2 * n).reshape(r, k)
        return cls(ids, probs)

    def __len__(self) -> int:
        return len(self.ids)


def from_features(features: np.ndarray, k: int = TOP_K, backbone: str = "tf_efficientnet_lite0") -> Concepts:
    return from_probs(region_probs(features, backbone), k)


def from_probs(probs: np.ndarray, k: int = TOP_K) -> Concepts:
    """Concepts of regions' (R, 1000) class probabilities (region_probs, or cnn.py's head)."""
    ids, p = topk(probs, k)
    return Concepts(ids, p)


def topk_bytes(regions: int, k: int = TOP_K) -> int:
    """Bytes one photo's concepts take in a store (before LMDB's own per-key overhead)."""
    return 4 + 4 * k * regions


def bridge_scores(weights: np.ndarray, concepts: Concepts) -> np.ndarray:
    """bridge(w, region) = Σ_k p_k · weights[w, c_k]: (W, 1000) x one photo's (R, K) -> (W, R)."""
    ids = concepts.ids.astype(np.int64)
    return (weights[:, ids] * concepts.probs.astype(np.float32)[None]).sum(-1)


def bridge_scores_many(weights: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The same over many regions at once: ids, probs (N, K) -> (W, N)."""
    out = np.zeros((len(weights), len(ids)), np.float32)
    p = probs.astype(np.float32)
    for k in range(ids.shape[1]):
        out += weights[:, ids[:, k].astype(np.int64)] * p[None, :, k]
    return out


# --------------------------------------------------------------------------- a photo's concepts


def photo_concepts(concepts: Concepts, boxes: np.ndarray | None = None, top: int = 5) -> list[dict]:
    """A photo's most probable classes over its regions (each class's best region), for listing."""
    best: dict[int, tuple[float, int]] = {}
    for r in range(len(concepts)):
        for c, p in zip(concepts.ids[r].tolist(), concepts.probs[r].astype(np.float32).tolist()):
            if p > best.get(c, (-1.0, 0))[0]:
                best[c] = (p, r)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    return [{"class": int(c), "name": display_name(c), "prob": round(p, 4), "region": r,
             **({"box": [int(v) for v in boxes[r]]} if boxes is not None else {})}
            for c, (p, r) in ranked]
