"""`vsa index build|status|remove|text`: the photo index (and its sentence twin) on disk."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import index as ix
from ..core import paths
from ..core.device import pick_device
from ..core.errors import SearchIndexError, UsageError
from ..index.photos import BATCH_SIZE
from ..models.alignment import load_align
from ..vision.images import DEFAULT_MAX_MEGAPIXELS
from .common import err, new_app, out, print_json, progress

app = new_app("Index folders of photos for search (and sentences for photo -> text).")

IndexOpt = Annotated[str, typer.Option("--index", help="Index name (in the folder `vsa info` shows), or a path.")]
ModelOpt = Annotated[str, typer.Option("--model", help="Alignment model file or name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
TypeOpt = Annotated[str, typer.Option("--index-type",
                                      help="auto | flat | pq | ivfpq | ivf | hnsw (auto: exact flat while small, "
                                           "then PQ codes, rescored exactly).")]
MemOpt = Annotated[str | None, typer.Option("--max-memory", help="FAISS memory budget (e.g. 4G): past it, auto "
                                                                 "builds IVF-PQ codes (see benchmarks/scale.py).")]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n): slice i (0-based) of n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: want i/n, e.g. 0/4 (slice 0 of 4)") from None
    return ix.check_shard((i, n))


def parse_size(text: str) -> int:
    """"512M", "4G", "1.5GB", "1000000" -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", text)
    if not m:
        raise UsageError(f"{text!r}: not a size (examples: 512M, 4G)")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


@app.command("build")
def build_cmd(
    roots: Annotated[list[Path] | None, typer.Argument(help="Folders (searched recursively) or photo files. "
                                                            "Default: the folders the index was built from.")] = None,
    index: IndexOpt = ix.DEFAULT_NAME,
    model: ModelOpt = paths.ALIGN_MODEL,
    index_type: TypeOpt = "auto",
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    batch_size: Annotated[int, typer.Option(help="Photos per CNN batch (and per saved batch).")] = BATCH_SIZE,
    shard: Annotated[str | None, typer.Option(help="i/n: index only slice i of n (a stable hash of each photo's "
                                                   "path); combine the n shards with `vsa index merge`.")] = None,
    max_memory: MemOpt = None,
    use_ray: Annotated[bool, typer.Option("--ray", help="Build on Ray: a pool of actors encodes the photos "
                                                        "as shards, merged into the index "
                                                        "(pip install -e '.[ray]').")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster (auto, HOST:PORT, "
                                                    "ray://HOST:10001); implies --ray. Default: $RAY_ADDRESS, "
                                                    "else a new local cluster.")] = None,
    workers: Annotated[int | None, typer.Option(help="--ray: model actors (default: one per GPU, else one per "
                                                     "CPU).")] = None,
    shards: Annotated[int | None, typer.Option(help="--ray: shards (default: the existing set's, else 2 per "
                                                    "worker); kept beside the index as NAME.shard-I-of-N.")] = None,
    merge: Annotated[bool, typer.Option(help="--ray: merge the shards into the index (--no-merge: keep the "
                                             "shard set only, for `vsa search --shards`).")] = True,
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Skip photos with more pixels "
                                                  "(a decompression-bomb guard).")] = DEFAULT_MAX_MEGAPIXELS,
    replace: Annotated[bool, typer.Option("--replace", help="Allow a build that drops the index's photos: "
                                          "another --model, or folders that leave some of its own out.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Index photos: new, changed and removed ones are handled, moved ones are recognised by
    content; an interrupted build continues where it stopped."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    if max_megapixels <= 0:
        raise UsageError(f"--max-megapixels must be positive (got {max_megapixels:g})")
    part = parse_shard(shard) if shard else None
    if part and index == ix.DEFAULT_NAME:  # never let a slice replace the full default index
        index = f"{ix.DEFAULT_NAME}.shard-{part[0]}-of-{part[1]}"
    budget = parse_size(max_memory) if max_memory else None
    if err.is_terminal:  # the seconds before the progress bar appears are not silent
        err.print("loading the model and comparing the photos with the index...")
    t0 = time.perf_counter()
    if use_ray or ray_address:
        if part:
            raise UsageError("--shard and --ray exclude each other (a --ray build makes its own shards)")
        from ..cluster import build as ray_build

        with progress("encoding", None) as advance:
            report = ray_build.build(roots or None, model, index, index_type, workers=workers, shards=shards,
                                     merge=merge, address=ray_address, device=device, batch_size=batch_size,
                                     max_memory=budget, max_megapixels=max_megapixels, replace=replace,
                                     on_total=lambda n: advance(0, total=n), on_progress=advance)
    else:
        if workers is not None or shards is not None or not merge:
            raise UsageError("--workers, --shards and --no-merge are options of a --ray build")
        dev = pick_device(device)  # one choice for the CNN and the alignment model alike
        loaded = load_align(paths.find_model(model), dev)
        with ix.PhotoBuild(roots or None, loaded, index, index_type, device=dev, batch_size=batch_size,
                           max_memory=budget, shard=part, max_megapixels=max_megapixels, replace=replace) as b:
            todo = b.plan()
            with progress("encoding", todo) as advance:
                report = b.run(on_progress=advance)
    dt = time.perf_counter() - t0
    if json_out:
        print_json(report.to_dict())
        return
    _print_build(report, f" ({report.encoded / dt:.1f} photos/s)" if report.encoded and dt > 0 else "", merge)


def _print_build(report: Any, rate: str, merge: bool) -> None:
    """A build's report: counts on stdout, what the user should know about on stderr."""
    state = "up to date" if report.up_to_date else "built"
    out.print(f"{report.index}: {state}, {report.photos} photos, {report.regions} regions ({report.index_type})")
    out.print(f"  {report.added} added, {report.changed} changed, {report.moved} moved, {report.removed} removed, "
              f"{report.unchanged} unchanged; {report.encoded} encoded{rate}"
              + (f", {report.resumed} from an interrupted build" if report.resumed else ""))
    if getattr(report, "shards", None):
        out.print(f"  on Ray: {len(report.shards)} shards (NAME.shard-I-of-{len(report.shards)}), "
                  f"{report.workers} workers, {report.retried} shard runs retried"
                  + ("" if report.merged or not merge else "; merged index already up to date"), markup=False)
    if report.replaced:
        out.print(f"  the previous index was unusable and was replaced: {report.replaced}", markup=False)
    if report.model_changed:
        out.print("  the model changed since the last build: every photo was encoded again")
    for root, n in sorted(report.unreachable.items()):
        err.print(f"  {root}: unreachable (gone or empty); its {n} photos were kept, not removed (to drop them, "
                  "build with the other folders and --replace)", markup=False)
    if report.work_discarded:
        err.print(f"  an interrupted build's vectors were discarded: {report.work_discarded}", markup=False)
    if report.skipped:
        err.print(f"skipped {len(report.skipped)} unreadable file{'s' if len(report.skipped) != 1 else ''}:")
        for _, why in sorted(report.skipped.items()):
            err.print(f"  {why}", markup=False)


@app.command("merge")
def merge_cmd(
    parts: Annotated[list[str], typer.Argument(help="The shard indexes (names or paths) to combine.")],
    index: IndexOpt = ix.DEFAULT_NAME,
    index_type: TypeOpt = "auto",
    max_memory: MemOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Combine shard indexes (vsa index build PATH --shard i/n) into one; it equals a single build."""
    budget = parse_size(max_memory) if max_memory else None
    with progress("merging", None) as advance:
        report = ix.merge(parts, index, index_type, max_memory=budget, on_progress=advance)
    if json_out:
        print_json(report.to_dict())
        return
    out.print(f"{report.index}: merged {len(report.parts)} parts, {report.photos} photos, {report.regions} regions "
              f"({report.index_type}, ~{_size(report.memory_bytes)} of FAISS memory), {report.seconds:.1f}s",
              markup=False)


@app.command("status")
def status_cmd(index: IndexOpt = ix.DEFAULT_NAME,
               verify: Annotated[bool, typer.Option("--verify", help="Check every file of the index against "
                                                                     "its checksum.")] = False,
               json_out: JsonOpt = False) -> None:
    """What an index holds: photos, regions, model, size on disk."""
    s = ix.status(index, verify=verify)
    damaged = [e["damaged"] for e in (s.get(kind) for kind in ix.KINDS) if e and "damaged" in e]
    if json_out:
        print_json(s)
        if damaged:
            raise typer.Exit(1)
        return
    if damaged:
        # A file that opens but fails its checksum would be reused by an incremental build: start afresh.
        raise SearchIndexError(damaged[0] if "vsa index build" in damaged[0] else
                               f"{damaged[0]}; rebuild it: `vsa index remove --index {shlex.quote(index)}`, then "
                               f"`vsa index build PATH --index {shlex.quote(index)}`")
    out.print(f"index: {s['index']}", markup=False)
    for kind, (items, frags) in ix.KINDS.items():
        e = s.get(kind)
        if e is None:
            continue
        if "index_type" in e:
            out.print(f"  {items}: {e[items]}, {frags}: {e[frags]}, skipped: {e['skipped']}")
            out.print(f"    type: {e['index_type']}, dim: {e['dim']}, size on disk: {_size(e['bytes'])}")
            out.print(f"    model: {e['model']} ({e['model_path']})", markup=False)
            if "roots" in e:
                out.print(f"    roots: {', '.join(e['roots'])}", markup=False)
        if e.get("verified"):
            out.print("    verified: every file matches its checksum")
        if e.get("interrupted_build"):
            if e.get("interrupted_roots") and e["interrupted_roots"] != e.get("roots"):
                out.print(f"    interrupted build of: {', '.join(e['interrupted_roots'])}", markup=False)
            out.print(f"  {items}: an interrupted build is pending: run `{_resume_command(index, s['index'], e)}` "
                      "to finish it", markup=False)


def _resume_command(index: str, link: str, entry: dict) -> str:
    """The command that finishes an interrupted build: the folders come from its work area or the
    index's manifest (a work area from before it recorded them needs them named), and --model
    when it was not the default (another model would encode everything again)."""
    shown = index if ix.resolve(index) == paths.indexes_dir() / index else link  # a path: absolute, from anywhere
    cmd = "vsa index build" if entry.get("interrupted_roots") or entry.get("roots") else "vsa index build PATH..."
    if index != ix.DEFAULT_NAME:
        cmd += f" --index {shlex.quote(shown)}"
    used = entry.get("interrupted_model_path")
    if used and Path(used) != paths.find_model(paths.ALIGN_MODEL).resolve():
        cmd += f" --model {shlex.quote(used)}"
    return cmd


@app.command("remove")
def remove_cmd(index: IndexOpt = ix.DEFAULT_NAME, json_out: JsonOpt = False) -> None:
    """Delete an index (its photos stay where they are)."""
    removed = ix.remove(index)
    if json_out:
        print_json({"removed": removed})
    else:
        for p in removed:
            out.print(f"removed {p}", markup=False)


@app.command("text")
def text_cmd(
    files: Annotated[list[Path], typer.Argument(help="Sentences, one per line, or a captions file "
                                                     "(name#n<TAB>caption, as Flickr8k.token.txt).")],
    index: IndexOpt = ix.DEFAULT_NAME,
    model: ModelOpt = paths.ALIGN_MODEL,
    index_type: TypeOpt = "auto",
    generator: Annotated[str | None, typer.Option(
        help="A caption model (with prior photos, e.g. caption-ensemble) that re-ranks a photo's sentences "
             "(each sentence's prior: one generator pass per prior photo).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Index sentences as word-fragment vectors, for `vsa search --image PHOTO`."""
    loaded = load_align(paths.find_model(model), "cpu")
    gen = None
    if generator is not None:
        from ..models.captioner import load_caption

        gen = load_caption(paths.find_model(generator), "cpu")
    total: list[int] = []
    with progress("encoding, then priors" if gen else "encoding", None, unit="sentences") as advance:
        report = ix.build_sentences(files, loaded, index, index_type, on_total=total.append, on_progress=advance,
                                    generator=gen, on_prior=gen and (lambda n: advance(n / len(gen.prior))))
    if json_out:
        print_json(report.to_dict())
        return
    out.print(f"{report.index}: {report.sentences} sentences, {report.words} words ({report.index_type})"
              + (f"; {report.skipped} without known words skipped" if report.skipped else "")
              + (f"; {report.duplicates} duplicate sources ignored" if report.duplicates else ""), markup=False)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
