"""docs/RESULTS.md's tables of the benchmarks (`benchmarks/*.py --json`): speed, memory, footprint and
the near-duplicates' recall."""

from __future__ import annotations

from pathlib import Path

from results_format import f1, f2, f3, table


def dupes(d: dict) -> str:
    th = next(t for t in d["thresholds"] if t["threshold"] == d["threshold"])
    rows = [[r["copy"], r["true"], r["found"], r["correct"], f3(r["precision"]), f3(r["recall"])] for r in th["rows"]]
    parts = [
        "## Near-duplicates: `benchmarks/dupes.py`",
        "Written by `nice python benchmarks/dupes.py --keep DIR --sweep --grid --stats --json "
        "docs/results/bench-dupes.json`: "
        f"{d['photos']:,} photos built from Flickr8k train and dev photos (never test; seed 0), {d['with_copies']} of "
        f"them with a copy of each kind ({', '.join(d['copies'])}), indexed with the shipped model. A pair is true "
        "when both photos come from one original, found when they share a group; a row counts the pairs that hold "
        f"a copy of its kind. Threshold {d['threshold']:g}; the photo suggested to keep is the original in "
        f"{th['kept_original']} of {th['groups']} groups.",
        table(["copy", "true pairs", "pairs found", "correct", "precision", "recall"], rows)]
    if len(d["thresholds"]) > 1:
        parts += ["`--sweep`: over all pairs, by threshold:",
                  table(["threshold", "precision", "recall", "groups"],
                        [[f"{t['threshold']:g}", f3(t["rows"][-1]["precision"]), f3(t["rows"][-1]["recall"]),
                          t["groups"]] for t in d["thresholds"]])]
    if d.get("grid"):
        floors = sorted({g["floor"] for g in d["grid"]})
        bonuses = sorted({g["bonus"] for g in d["grid"]})
        cell = {(g["floor"], g["bonus"]): f"{g['precision']:.3f} / {g['recall']:.3f}" for g in d["grid"]}
        parts += ["`--grid`: precision / recall over all pairs, by the cosine floor and the bonus:",
                  table(["cosine floor", *[f"bonus {b:g}" for b in bonuses]],
                        [[f"{fl:g}", *[cell[(fl, b)] for b in bonuses]] for fl in floors])]
    if d.get("stats"):
        st = d["stats"]
        rows = [[c["copy"], f"{c['bits_median']:.0f}, {c['bits_max']}", f"{c['cosine_min']:.3f}, "
                 f"{c['cosine_median']:.3f}"] for c in st["copies"]]
        x = st["distinct"]
        rows.append([f"distinct ({x['pairs']:,} pairs)", f"0.1st percentile {x['bits_p0.1']:.0f}, min {x['bits_min']}",
                     f"max {x['cosine_max']:.3f}, pairs above 0.9: {x['above_0.9']}"])
        parts += ["`--stats`: how far each copy lies from its original:",
                  table(["copy", "pHash bits to its original: median, max", "cosine: min, median"], rows)]
    return "\n\n".join(parts)


def regions_speed(d: dict) -> str:
    base = next(r["photos_per_s"] for r in d["rows"] if r["stage"] == d["baseline"])
    rows = [[r["stage"], f1(r["photos_per_s"]), f1(1000 / r["photos_per_s"]), f"{r['photos_per_s'] / base:.2f}x"]
            for r in d["rows"]]
    return "\n\n".join([
        "## Region extraction speed: `benchmarks/regions.py`",
        f"Written by `python benchmarks/regions.py --photos {d['photos']} --threads {d['threads']} --json "
        f"docs/results/bench-regions.json`: {d['photos']} Flickr8k photos, {d['threads']} torch threads, one run; "
        "the last column is relative to the full-image-only pipeline.",
        table(["stage", "photos/s", "ms/photo", "vs full-image total"], rows)])


def build_speed(d: dict, title: str, cmd: str) -> str:
    res = {(r["code"], r["photos_set"]): r for r in d["results"]}
    sets = list(dict.fromkeys(r["photos_set"] for r in d["results"]))
    rows, stages = [], []
    for s in sets:
        for c in d["codes"]:
            r = res.get((c, s))
            if r is None:
                continue
            if "error" in r or not r.get("photos"):
                rows.append([r.get("label", s), c, f"not read: {r.get('error', 'no photo read')}", "", "", "", ""])
                continue
            r640 = res.get((c, "640"), {}).get("rate")
            base = res.get((d["codes"][0], s), {}).get("rate") if c != d["codes"][0] else None
            rows.append([r["label"], c, f"**{r['rate']:.1f}**", f"{r['rate'] / r640:.2f}x" if r640 else "–",
                         f"{r['rate'] / base:.2f}x" if base else "–", f"{r['cpu_ms']:.0f}", f2(r["peak_gb"])])
            if "decode_ms" in r:
                parts = [r[k] for k in ("decode_ms", "proposals_ms", "cnn_ms", "align_ms", "write_ms")]
                stages.append([r["label"], c, *[f1(x) for x in parts], f1(sum(parts))])
    load = "" if not d.get("load_end") else f" Load average at the end: {', '.join(f'{x:.1f}' for x in d['load_end'])}."
    out = [title, f"Written by `{cmd}`; each row is the fastest of {d['repeat']} interleaved runs.{load}",
           table(["photos", "code", "photos/s", "vs 640 px, same code", "vs baseline", "CPU ms/photo", "peak RSS GB"],
                 rows)]
    if stages:
        out.append(table(["photos", "code", "decode", "proposals", "CNN", "alignment encoding", "write",
                          "sum (CPU ms/photo)"], stages))
    return "\n\n".join(out)


def baseline_model(d: dict) -> str:
    """The build benchmark's options when its baseline is another model on the same code."""
    m = d.get("models", {})
    if "baseline" not in m or m["baseline"] == m.get("this"):
        return ""
    return f" --baseline . --baseline-model {Path(m['baseline']).name}"


def _count(n: int) -> str:
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n:,}"


def _ms(s: float) -> str:
    return f"{1000 * s:.1f}" if s < 1 else f"{1000 * s:.0f}"


def search_speed(d: dict) -> str:
    base = {r["regions"]: r["p50"] for r in d["rows"] if r["type"] == "exhaustive"}
    rows = []
    for r in d["rows"]:
        if r["type"] == "exhaustive":
            name, build = "exhaustive (baseline)", "–"
        else:
            name = r["type"] + (" (auto)" if r["auto"] else "") + ("" if r["default_setting"] else f", {r['setting']}")
            build = f1(r["build_s"])
        rows.append([_count(r["regions"]), name, build, f"{r['bytes']:.0f}", _ms(r["p50"]), _ms(r["p95"]),
                     _ms(r["cpu50"]), f1(base[r["regions"]] / r["p50"]), f3(r["recall"])])
    return "\n\n".join([
        "## Search speed, synthetic vectors: `benchmarks/search.py`",
        f"Written by `OMP_NUM_THREADS=1 nice python benchmarks/search.py --queries {d['queries']} --json "
        f"docs/results/bench-search.json`: synthetic {d['dim']}-d region vectors, 20 regions a photo, top {d['k']}, "
        "one FAISS thread; the exhaustive exact `S_kl` over every photo is the baseline of the same run. cpu50 is "
        "the median CPU time of a query (what an idle core gives when other work inflates the wall-clock p50). "
        "Measured with index format 1 (float32 vectors in FAISS).",
        table(["regions", "index", "build s", "bytes/region", "p50 ms", "p95 ms", "cpu50 ms",
               "× faster than exhaustive", "recall@10"], rows)])


def footprint(d: dict) -> str:
    """`disk` and `resident` hold bytes a photo, per file."""
    res = d.get("resident", {})
    files = [[f"`{name}`", f"{b:,.0f}", f"{res[name]:,.0f}" if name in res else ""]
             for name, b in d["disk"].items() if name != "total"]
    files.append(["**all files**", f"**{d['disk']['total']:,.0f}**",
                  f"**{res['total']:,.0f}**" if "total" in res else ""])
    parts = [f"## A real index: `benchmarks/footprint.py` ({d['photos']:,} Flickr8k test photos)",
             "Written by `python benchmarks/footprint.py --split test --queries 500 --json > "
             "docs/results/bench-footprint.json`: the test photos built with the shipped model by the real build "
             f"code from the evaluation cache's features (20 regions a photo, {d['dim']:,}-d vectors), "
             "searched as `vsa search --no-bridge` does; exact is `S_kl` of every photo from the model's float32 "
             "vectors.",
             table(["file", "bytes a photo on disk", "bytes a photo kept in memory by a warm search"], files)]
    if res:
        parts.append(table(["measure", "value"], [
            ["index type (`auto`)", d["index_type"]],
            [f"recall@10 against exact `S_kl` ({d['queries']} dev captions)", f3(d["recall@10 vs exact (float32)"])],
            ["recall@10 against exhaustive scoring of the stored int8 vectors",
             f3(d["recall@10 vs exhaustive (stored int8)"])],
            ["exhaustive scoring of the int8 vectors against exact float32",
             f3(d["exhaustive (stored int8) vs exact (float32)"])],
            ["query p50 (one thread)", f"{d['query p50 ms']:.1f} ms"]]))
    return "\n\n".join(parts)


def cold(d: dict, title: str, cmd: str, with_code: bool) -> str:
    base = d["rows"][0]["p50_s"]
    head = ["command", "code", "p50 s", "p95 s", "p50 / baseline"] if with_code else \
        ["command", "p50 s", "p95 s", "p50 / baseline"]
    rows = []
    for r in d["rows"]:
        cells = [f"`{r['command']}`", *([r["code"]] if with_code else []), f2(r["p50_s"]), f2(r["p95_s"]),
                 f"{r['p50_s'] / base:.1f}x"]
        rows.append(cells)
    return "\n\n".join([title, f"Written by `{cmd}`: each command in a new process, interleaved with the baseline "
                        f"in {d['runs']} rounds; load average {d['load']:.1f} at the start, {d['load_end']:.1f} "
                        "at the end.", table(head, rows)])


def serve(d: dict) -> str:
    cli50 = d["rows"][0]["p50_ms"]
    rows = [[r["name"], r["queries"], f"**{r['p50_ms']:,.1f}**" if "1 client, HTTP" in r["name"] else
             f"{r['p50_ms']:,.1f}", f"{r['p95_ms']:,.1f}", r["errors"], f"{cli50 / r['p50_ms']:.1f}"]
            for r in d["rows"]]
    return "\n\n".join([
        "## Serving: `benchmarks/serve.py`",
        f"Written by `OMP_NUM_THREADS={d['omp_threads']} python benchmarks/serve.py --index NAME --queries 50 "
        f"--clients {d['clients']} --per-client 5 --cli-queries {d['cli_queries']} --json "
        "docs/results/bench-serve.json`: text "
        f"queries over HTTP against a warm `vsa serve` and a `vsa search` process per query, on {d['photos']:,} "
        f"Flickr8k test photos ({d['regions']:,} regions, {d['index_type']}); the server loaded in {d['load_s']:.1f} "
        f"s. {d['clients']} clients got {d['answers']} answers in {d['wall_s']:.1f} s with {d['errors']} errors; the "
        f"CLI's JSON equalled the server's for {d['cli_queries'] - d['mismatches']} of {d['cli_queries']} queries.",
        table(["text query, top 10", "queries", "p50 ms", "p95 ms", "errors", "p50 × faster than CLI"], rows)])


def scale(d: dict) -> str:
    def vs_flat(r: dict) -> str:
        flat = [f for f in d["rows"] if f["type"] == "flat" and (f["regions"], f["dim"]) == (r["regions"], r["dim"])]
        return f"{flat[0]['p50_ms'] / r['p50_ms']:.1f}x" if flat else "-"

    rows = [[_count(r["regions"]), r["dim"], r["type"], r["nprobe"], f1(r["build_s"]), f"{r['ram_per_photo']:,.0f}",
             f2(r["p50_ms"]), f2(r["p95_ms"]), f3(r["recall10"]), f3(r["recall10_rr"]), vs_flat(r)] for r in d["rows"]]
    return "\n\n".join([
        "## Scale, FAISS alone: `benchmarks/scale.py`",
        f"Written by `python benchmarks/scale.py --queries {d['queries']} --json docs/results/bench-scale.json`: "
        f"synthetic clustered float16 vectors, 20 regions a photo, {d['threads']} FAISS thread, one query vector, top "
        "10; re-ranked is FAISS's top 256 re-scored exactly, as search does.",
        table(["regions", "dim", "type", "nprobe", "build s", "RAM B/photo", "p50 ms", "p95 ms", "recall@10",
               "re-ranked", "vs flat"], rows)])


def library(d: dict) -> str:
    return "\n\n".join([
        f"## A library of {d['photos']:,} photos: `benchmarks/library.py`",
        f"Written by `python benchmarks/library.py --photos {d['photos']} --json docs/results/bench-library.json`: "
        "an index in the real layout, written by the real writer with the shipped model's shape (20 regions a photo, "
        "512-d region parts, a 1,024-d global part, querybank offsets, boxes, concepts) from synthetic clustered "
        "vectors; 8-word queries; exact is `S_kl` from the float32 vectors before they were stored.",
        table(["measure", "value", "note"], d["rows"])])


def ray_build(d: dict) -> str:
    base = d["rows"][0]["photos_per_s"]
    rows = [[r["build"], r["actors"], f1(r["wall_s"]), f2(r["photos_per_s"]), f"{r['photos_per_s'] / base:.2f}x",
             f2(r["steady_photos_per_s"]), f1(r["startup_s"])] for r in d["rows"]]
    return "\n\n".join([
        "## Builds on Ray: `benchmarks/ray_build.py`",
        f"Written by `OMP_NUM_THREADS={d['omp_threads']} python benchmarks/ray_build.py --photos {d['photos']} --json "
        f"docs/results/bench-ray-build.json`: {d['photos']} Flickr8k photos, the shipped model, {d['cpus']} CPUs, load "
        f"average {d['load_before']:.1f} before and {d['load_after']:.1f} after; the local cluster started in "
        f"{d['init_s']:.1f} s (`ray.init`), before the rows.",
        table(["build", "actors", "wall s", "photos/s", "vs single", "steady photos/s", "start-up s"], rows)])
