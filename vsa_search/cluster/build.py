"""`vsa index build PATH --ray`: a photo index built by a pool of Ray actors.

The photos are split into n shards by the stable path hash of `--shard i/n` (index.shard_of). A
Ray Data pipeline hands the shards, one per batch, to an actor pool: each actor loads the CNN and
the alignment model once (one actor per GPU where the cluster has GPUs, else one per CPU) and
builds its shards with index.PhotoBuild(shard=(i, n)), the single-machine sharded build: listing,
planning (new / changed / removed / moved), decoding, proposals, CNN and alignment model, work area,
generation. The shards are then combined with index.merge, as `vsa index merge` does. The merged
index therefore equals a single-process build by construction (tests/test_ray.py checks it).

Failure and resumption come from the pieces: Ray restarts an actor that dies and runs its shard
again, and that shard's build resumes from its work area (the photos it had encoded are not
encoded again); a whole build that is interrupted resumes the same way shard by shard, and the
shards it had finished are up to date. The shard indexes stay beside the index (NAME.shard-I-of-N):
the next build plans against them, so it is incremental, and they are a shard set `vsa search
--shards NAME` can search without the merged copy. Every node must see the photos and the index
folder at the same paths (a shared file system).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import index as ix
from ..core import paths
from ..core.errors import ModelError, UsageError
from ..index.layout import MANIFEST, work_roots
from ..index.photos import BATCH_SIZE
from ..vision.images import DEFAULT_MAX_MEGAPIXELS
from .shards import existing_split, shard_link, splits

SHARDS_PER_WORKER = 2  # default split: a retried or slow shard then holds up half a worker's share, not all of it
POLL_S = 0.1


@dataclass
class RayBuildReport(ix.BuildReport):
    shards: list[str] = field(default_factory=list)
    workers: int = 0
    retried: int = 0  # shard runs Ray started again after their worker died
    merged: bool = False  # the merged index was (re)written in this run

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "shards": self.shards, "workers": self.workers, "retried": self.retried,
                "merged": self.merged}


class _Tracker:
    """A Ray actor the workers report to, so the driver can show progress and count retries."""

    def __init__(self) -> None:
        self.done = 0
        self.starts: list[tuple[int, int]] = []  # (shard, worker pid), in order
        self.todo: dict[int, int] = {}  # shard -> photos its plan sends to the CNN

    def started(self, shard: int, pid: int) -> None:
        self.starts.append((shard, pid))

    def planned(self, shard: int, todo: int) -> None:
        self.todo[shard] = todo

    def add(self, n: int) -> None:
        self.done += n

    def snapshot(self) -> tuple[int, list[tuple[int, int]], dict[int, int]]:
        return self.done, list(self.starts), dict(self.todo)


class _ShardWorker:
    """A Ray Data actor: loads the models once, then builds each shard it is handed."""

    def __init__(self, job: dict[str, Any], tracker: Any):
        from ..models.alignment import load_align

        self.job, self.tracker = job, tracker
        self.model = load_align(job["model"], job["device"])
        self.encoder: Any = None  # the CNN, loaded on the first shard with photos to encode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job, reports = self.job, []
        for i in (int(s) for s in batch["shard"]):
            self.tracker.started.remote(i, os.getpid())
            with ix.PhotoBuild([Path(r) for r in job["roots"]], self.model, Path(job["links"][i]), job["index_type"],
                               device=job["device"], batch_size=job["batch_size"],
                               max_megapixels=job["max_megapixels"], max_memory=job["max_memory"],
                               shard=(i, len(job["links"])), replace=job["replace"]) as b:
                todo = b.plan()
                self.tracker.planned.remote(i, todo)
                if todo and self.encoder is None:
                    from ..vision.regions import RegionEncoder

                    self.encoder = RegionEncoder(self.model.region_config, job["device"], top=self.model.top)
                b.encoder = self.encoder
                report = b.run(on_progress=self.tracker.add.remote)
            reports.append(json.dumps(report.to_dict()))
        return {"shard": batch["shard"], "report": np.array(reports, dtype=object)}


def build(roots: list[str | Path] | None, model: str | Path = paths.ALIGN_MODEL, name: str | Path | None = None,
          index_type: str = "auto", *, workers: int | None = None, shards: int | None = None, merge: bool = True,
          address: str | None = None, device: str | None = None, batch_size: int = BATCH_SIZE,
          max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, max_memory: int | None = None, replace: bool = False,
          on_total: Callable[[int], None] | None = None, on_progress: Callable[[int], None] | None = None,
          on_shard_start: Callable[[int, int], None] | None = None) -> RayBuildReport:
    """Build (or update) the photo index `name` on Ray: `workers` actors (default: one per GPU of
    the cluster, else one per CPU) encode `shards` shards (default: the existing split, else
    SHARDS_PER_WORKER per worker), merged into `name` unless merge=False. `max_megapixels` and
    `replace` mean what they mean to index.PhotoBuild (each shard's build gets them). on_total(photos to
    encode) comes once every shard has planned; on_progress(n) counts encoded photos;
    on_shard_start(shard, worker pid) reports each run of a shard (retries included)."""
    from . import connected, task_error

    t0 = time.perf_counter()
    if index_type not in ix.INDEX_TYPES:
        raise UsageError(f"unknown index type {index_type!r}; choose one of {', '.join(ix.INDEX_TYPES)}")
    for opt, v in (("--workers", workers), ("--shards", shards), ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise UsageError(f"{opt} must be at least 1 (got {v})")
    link = ix.resolve(name)
    model_path = paths.find_model(str(model))
    if not model_path.is_file():
        raise ModelError(f"{model}: no such model file")
    root_paths = _roots(roots, link)
    with connected(address) as ray:
        import ray.data

        # No per-run INFO lines on stderr, nor Ray Data's log of a failed shard (with its traceback):
        # the failure arrives here as an exception and the CLI says it in one line.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
        slots, kind = (gpus, "GPUs") if gpus else (int(resources.get("CPU", 1)), "CPUs")
        if workers is not None and workers > slots:  # Ray Data would wait forever for the missing actors
            raise UsageError(f"--workers {workers}: the Ray cluster has {slots} {kind} (one actor each)")
        workers = workers or max(1, slots)
        n = shards or existing_split(link) or SHARDS_PER_WORKER * workers
        links = [shard_link(link, i, n) for i in range(n)]
        job = {"model": str(model_path.resolve()), "roots": [str(r) for r in root_paths],
               "links": [str(p) for p in links], "index_type": index_type,
               "device": device or ("cuda" if gpus else "cpu"), "batch_size": batch_size,
               "max_megapixels": max_megapixels, "max_memory": max_memory, "replace": replace}
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is on stderr already
        ctx.print_on_execution_start = False
        # A shard build's own error (e.g. "add --replace") must reach the user as it was raised: Ray Data
        # otherwise wraps it in a UserCodeException whose cause is lost on the way to this process.
        ctx.raise_original_map_exception = True
        tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        ds = ray.data.from_items([{"shard": i} for i in range(n)], override_num_blocks=n).map_batches(
            _ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, n)),
            fn_constructor_kwargs={"job": job, "tracker": tracker}, **per_actor)
        rows, starts = _drive(ray, ds, tracker, n, on_total, on_progress, on_shard_start, task_error)
    shard_reports = [json.loads(r["report"]) for r in sorted(rows, key=lambda r: int(r["shard"]))]
    report = _combine(link, shard_reports, links, workers, starts - n)
    if merge:
        _merge(report, link, links, job["roots"], index_type, max_memory)
    else:
        report.index = str(shard_link(link, "I", n))  # what was built: the set
    for m, got in splits(link).items():  # an earlier split into another number of shards is stale now
        if m != n:
            for i in got:
                ix.remove(shard_link(link, i, m))
    report.seconds = time.perf_counter() - t0
    return report


def _roots(roots: list[str | Path] | None, link: Path) -> list[Path]:
    """The folders to index: as given, else those of the existing index (or of its shards)."""
    if roots:
        out = [Path(os.path.abspath(Path(r).expanduser())) for r in roots]
        for r in out:
            if not r.exists():
                raise UsageError(f"{r}: no such file or directory")
        return out
    n = existing_split(link)
    for cand in [link] + ([shard_link(link, 0, n)] if n else []):
        gen = ix.Location(cand).current()
        if gen is not None and (gen / MANIFEST).is_file():
            return [Path(p) for p in json.loads((gen / MANIFEST).read_text()).get("roots", [])]
    for work in sorted(link.parent.glob(f".{glob.escape(link.name)}.shard-*-of-*.work")):
        named = work_roots(ix.Location(link.with_name(work.name[1:-len(".work")])))  # a killed first build
        if named:
            return [Path(p) for p in named]
    raise UsageError("give the folders to index: vsa index build PATH... --ray")


def _drive(ray: Any, ds: Any, tracker: Any, n: int, on_total: Callable[[int], None] | None,
           on_progress: Callable[[int], None] | None, on_shard_start: Callable[[int, int], None] | None,
           task_error: Callable[[BaseException], Exception]) -> tuple[list[dict[str, Any]], int]:
    """Run the pipeline in a thread while this one relays the workers' progress. Returns the rows
    and how many shard runs started (n plus the retries)."""
    out: dict[str, Any] = {}

    def consume() -> None:
        try:
            out["rows"] = list(ds.iter_rows())
        except BaseException as e:  # re-raised below, in the caller's thread
            out["error"] = e

    th = threading.Thread(target=consume, name="ray-build", daemon=True)
    th.start()
    done, seen, total_sent = 0, 0, False
    while True:
        alive = th.is_alive()
        got, starts, todo = ray.get(tracker.snapshot.remote())
        for shard, pid in starts[seen:]:
            if on_shard_start:
                on_shard_start(shard, pid)
        seen = len(starts)
        if on_total and not total_sent and len(todo) == n:
            on_total(sum(todo.values()))
            total_sent = True
        if on_progress and got > done:
            on_progress(got - done)
        done = got
        if not alive:
            break
        th.join(POLL_S)
    if "error" in out:
        raise task_error(out["error"]) from None
    return out["rows"], seen


def _combine(link: Path, reports: list[dict[str, Any]], links: list[Path], workers: int,
             retried: int) -> RayBuildReport:
    r = RayBuildReport(index=str(link), model=reports[0]["model"], shards=[str(p) for p in links], workers=workers,
                       retried=max(0, retried))
    for key in ("photos", "regions", "added", "changed", "moved", "removed", "unchanged", "encoded", "resumed"):
        setattr(r, key, sum(int(s[key]) for s in reports))
    r.skipped = {s["path"]: s["reason"] for rep in reports for s in rep["skipped"]}
    r.model_changed = any(s["model_changed"] for s in reports)
    r.replaced = next((s["replaced"] for s in reports if s["replaced"]), None)
    r.up_to_date = all(s["up_to_date"] for s in reports)
    r.index_type = ",".join(sorted({s["index_type"] for s in reports}))
    return r


def _merge(r: RayBuildReport, link: Path, links: list[Path], roots: list[str], index_type: str,
           max_memory: int | None) -> None:
    """index.merge of the shards into `link`, unless no shard changed and `link` already holds them."""
    gen = ix.Location(link).current()
    if r.up_to_date and gen is not None and (gen / MANIFEST).is_file():
        m = json.loads((gen / MANIFEST).read_text())
        if (m["model"]["fingerprint"] == r.model and m["counts"].get("photos") == r.photos
                and m["counts"].get("regions") == r.regions and m.get("roots") == roots):
            r.index_type = m["index_type"]
            return
    mr = ix.merge(links, link, index_type, max_memory=max_memory)
    r.photos, r.regions, r.index_type, r.merged = mr.photos, mr.regions, mr.index_type, True
    r.up_to_date = False
