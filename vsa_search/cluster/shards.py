"""A photo index as a set of shards: `NAME.shard-I-of-N` beside `NAME` (what `vsa index build
--ray` and `--shard i/N` write), searched by fanning the query out and merging the top k.

Each shard answers with its own top k by the exact S_kl (search.search_text), so the union of
the shards' answers holds the top k of the whole set; sorting it by (score, path) gives what a
search of the merged index gives, whose items (sorted by path) break ties by path too. For exact
(flat) shards the two are equal; for IVF/HNSW/PQ shards the first stage is approximate per shard,
as it is per index.

Without Ray the shards are searched one after another in this process (`search_local`); with Ray
each shard lives in an actor that keeps its index and the model loaded (`RayShardSet`), which is
what a long-running front end holds on to. Nothing here imports Ray at module level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .. import index as ix
from ..core import paths
from ..core.errors import SearchIndexError, UsageError
from ..index.layout import MANIFEST
from ..index.query import Result, model_for, search_text


def shard_link(link: Path, i: int | str, n: int) -> Path:
    """Where shard i of n of the index at `link` lives (the name `--shard i/n` gives the default index)."""
    return link.with_name(f"{link.name}.shard-{i}-of-{n}")


def splits(link: Path) -> dict[int, list[int]]:
    """{n: [i, ...]} of the shard indexes found beside `link`."""
    if not link.parent.is_dir():
        return {}
    pattern = re.compile(re.escape(link.name) + r"\.shard-(\d+)-of-(\d+)")
    found: dict[int, list[int]] = {}
    for p in link.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_symlink():
            found.setdefault(int(m.group(2)), []).append(int(m.group(1)))
    return {n: sorted(i) for n, i in found.items()}


def existing_split(link: Path) -> int | None:
    """n of the complete shard set beside `link` (the newest one if there are several)."""
    complete = [n for n, got in splits(link).items() if got == list(range(n))]
    if not complete:
        return None
    return max(complete, key=lambda n: shard_link(link, 0, n).lstat().st_mtime_ns)


def resolve_set(spec: str) -> list[Path]:
    """`NAME` (its set NAME.shard-I-of-N, or the index NAME itself) or `NAME,NAME,...` -> links."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UsageError("--shards: give NAME (its NAME.shard-I-of-N set) or NAME,NAME,...")
    if len(names) > 1:
        return [ix.resolve(n) for n in names]
    link = ix.resolve(names[0])
    n = existing_split(link)
    if n is not None:
        return [shard_link(link, i, n) for i in range(n)]
    if ix.Location(link).current() is None:
        raise SearchIndexError(f"no shard set {names[0]!r}: no indexes {link.name}.shard-I-of-N in {link.parent} "
                          f"(build them with `vsa index build PATH --ray --index {names[0]}`)")
    return [link]


def check_set(links: list[Path]) -> list[dict[str, Any]]:
    """The shards' manifests, after checking they make one index: one model, no shard of a split
    missing or given twice."""
    manifests = []
    for link in links:
        gen = ix.Location(link).current()
        if gen is None:
            raise SearchIndexError(f"no photo index at {link}")
        try:
            m = json.loads((gen / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            raise SearchIndexError(f"{link}: unreadable manifest; build it again") from None
        if m.get("kind") != "photos":
            raise SearchIndexError(f"{link}: is a {m.get('kind')} index, not a photo index")
        manifests.append(m)
    fp = manifests[0]["model"]["fingerprint"]
    for link, m in zip(links, manifests):
        if m["model"]["fingerprint"] != fp:
            raise SearchIndexError(f"{link} was built with model {m['model']['fingerprint']}, {links[0]} with {fp}: "
                              "the shards of one index share one model")
    specs = [tuple(m["shard"]) for m in manifests if "shard" in m]
    ns = {n for _, n in specs}
    if len(ns) > 1:
        raise UsageError("the shards come from different splits: search the shards of one split")
    if ns:
        n = ns.pop()
        if sorted(i for i, _ in specs) != list(range(n)):
            raise UsageError(f"an incomplete or repeated set of {n} shards: give each of 0..{n - 1} once")
    return manifests


def merge_results(results: list[Result], k: int) -> Result:
    """The top k of the shards' answers, by exact score then path (the merged index's order)."""
    hits = sorted((h for r in results for h in r.hits), key=lambda h: (-h.score, h.key))[:k]
    first = results[0]
    return Result(first.query, first.words, first.ignored, hits, sum(r.candidates for r in results),
                  max(r.per_word for r in results), all(r.exact for r in results))


def search_local(links: list[Path], text: str, k: int = 10, model: str | Path | None = None,
                 per_word: int | None = None) -> Result:
    """Search every shard in this process, one after another, and merge."""
    check_set(links)
    results = []
    loaded = None
    for link in links:
        with ix.FragmentIndex(ix.Location(link), "photos") as x:
            if loaded is None:
                loaded = model_for(x, model)
            x.check_model(loaded)
            results.append(search_text(x, loaded, text, k, per_word))
    return merge_results(results, k)


class _ShardSearcher:
    """A Ray actor: one open shard and the model."""

    def __init__(self, link: str, model: str | None):
        self.index = ix.FragmentIndex(ix.Location(Path(link)), "photos")
        self.model = model_for(self.index, model)

    def search(self, text: str, k: int, per_word: int | None) -> Result:
        return search_text(self.index, self.model, text, k, per_word)


class RayShardSet:
    """One Ray actor per shard, each holding its FAISS index, LMDB metadata and the model; a query
    fans out to all of them and their top k are merged. Needs `ray.init()` (cluster.connected)
    first. `num_cpus` per actor is 0 by default: a query is one thread of small products, and
    shards may outnumber the cores of a small cluster."""

    def __init__(self, links: list[Path], model: str | Path | None = None, num_cpus: float = 0):
        from . import require_ray

        ray = require_ray()
        check_set(links)
        self._ray = ray
        model_path = str(paths.find_model(str(model)).resolve()) if model is not None else None
        # SPREAD: shard actors go to different nodes where there are several, so no node holds
        # more shards in RAM than its share.
        actor = ray.remote(num_cpus=num_cpus, scheduling_strategy="SPREAD")(_ShardSearcher)
        self.actors = [actor.remote(str(link), model_path) for link in links]
        self.links = links

    def search(self, text: str, k: int = 10, per_word: int | None = None) -> Result:
        if k <= 0:
            raise UsageError(f"-k must be at least 1 (got {k})")
        from . import task_error

        try:
            results = self._ray.get([a.search.remote(text, k, per_word) for a in self.actors])
        except Exception as e:
            raise task_error(e) from None
        return merge_results(results, k)

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []

    def __enter__(self) -> RayShardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search_set(spec: str, text: str, k: int = 10, model: str | Path | None = None, per_word: int | None = None,
               use_ray: bool = False, address: str | None = None) -> Result:
    """`vsa search TEXT --shards SPEC [--ray]`: one query over a shard set."""
    links = resolve_set(spec)
    if not use_ray:
        return search_local(links, text, k, model, per_word)
    from . import connected

    with connected(address), RayShardSet(links, model) as shard_set:
        return shard_set.search(text, k, per_word)
