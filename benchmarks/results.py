"""docs/RESULTS.md, and the README's headline table, from the JSON that the evaluations and benchmarks
write (docs/results/*.json).

    python benchmarks/results.py            # what `make results` runs: rewrites both
    python benchmarks/results.py --check    # exit 1 when either is not what the JSON gives

A figure changes by running the command named above its table with its JSON redirected or written into
docs/results/, then `make results`. This script measures nothing and imports nothing of vsa_search, so
that the page can be checked in a second (tests/test_results.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "RESULTS.md"
README = ROOT / "README.md"


def table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f1(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def ci(m: dict, key: str) -> str:
    """A figure with its 95% interval when the report has one: 27.7 [25.2–30.5]."""
    v, lohi = m.get(key), m.get(f"{key}_ci")
    if v is None:
        return "–"
    num = f"{v:g}" if key == "medr" else f"{v:.1f}"
    return f"{num} [{lohi[0]:.1f}–{lohi[1]:.1f}]" if lohi and key != "medr" else num


# --------------------------------------------------------------------------- evaluations


def recall_rows(report: dict, names: dict[str, str] | None = None) -> str:
    """`vsa eval recall --json`: one row per model, both directions."""
    rows = []
    for r in report["rows"]:
        a, s = r["metrics"]["image_annotation"], r["metrics"]["image_search"]
        name = (names or {}).get(r["name"], r["name"].removeprefix("this model: "))
        rows.append([name, ci(a, "R@1"), f1(a["R@5"]), ci(a, "R@10"), ci(a, "medr"),
                     ci(s, "R@1"), f1(s["R@5"]), ci(s, "R@10"), ci(s, "medr")])
    return table(["model", "ann. R@1", "R@5", "R@10", "medr", "search R@1", "R@5", "R@10", "medr"], rows)


def retrieval(d: dict) -> str:
    names = {"global baseline": f"global baseline (`{Path(d['baseline'].split()[0]).name}`)"}
    gen = next((r for r in d["rows"] if "generator" in r), None)
    command = "vsa eval recall --features TOP_FEATS" + (
        f" --generator {Path(gen['path']).stem} --generator-features FEATS" if gen else "")
    return "\n\n".join([
        "## Retrieval: `vsa eval recall` (Flickr8k test: 1,000 photos, 5,000 sentences)",
        f"Written by `{command} --json > docs/results/eval-recall.json`. {d['note']}.",
        recall_rows(d, names),
        "A model with a querybank is printed twice, with and without it. `weights/align.pt` is an ensemble of the "
        "paper's region model (with a global term) and two global models, scores added (`weights/align.md`); the "
        "global baseline is the first global model alone."
        + (f" The row re-ranked by the generator re-scores each photo's top {gen['generator']['depth']} sentences "
           f"by `S' + {gen['generator']['annotation_weight']:g} · [log P(s | p) - log P̄(s)]` (P̄ over the "
           f"{gen['generator']['prior_photos']} prior photos in the caption model file), as `vsa search --image` "
           "does on a sentence index built with `--generator`; search is not re-ranked (search weight "
           f"{gen['generator']['search_weight']:g})." if gen else "")])


def generator_tune(d: dict) -> str:
    rows = []
    for name, tried in d["rows"].items():
        for r in tried:
            m, pick = r["metrics"], r["weight"] == d["pick"][name]
            w = f"**{r['weight']:g} (the pick)**" if pick else f"{r['weight']:g}"
            rows.append([name, w, f1(m["R@1"]), f1(m["R@5"]), f1(m["R@10"]), f2(r["mean_recall"])])
    return "\n\n".join([
        "## The generator's weight in retrieval: `vsa eval generator-tune` (Flickr8k dev)",
        "Written by `vsa eval generator-tune --features TOP_FEATS --generator-features FEATS --json > "
        f"docs/results/eval-generator-tune.json`. {d['photos']:,} {d['split']} photos, {d['sentences']:,} sentences; "
        f"each query's top {d['depth']} re-scored, P̄ over the caption model's {d['prior_photos']} prior photos; "
        f"rule: {d['rule']}. Weight 0 is the alignment model alone. Search is measured but not re-ranked in "
        "`vsa search` (a photo index keeps no generator inputs).",
        table(["direction", "weight", "R@1", "R@5", "R@10", "mean R@K"], rows)])


def querybank(d: dict) -> str:
    rows = [["none", "", 0, "", "", "", f2(d["without_querybank"]["mean_recall"])]]
    pick = d.get("pick") or {}
    for r in d["rows"]:
        over = " (over the cap)" if r["file_bytes"] > d["max_bytes"] else ""
        chosen = all(r[k] == pick.get(k) for k in ("sentences", "photos", "bits", "beta", "weight"))
        bits = "" if r["bits"] == 8 else f", {r['bits']} bits"
        bank = f"{r['sentences']:,} / {r['photos']:,}{bits}" + (" (the pick)" if chosen else "")
        rows.append([f"**{bank}**" if chosen else bank, f"{r['beta']:g}", f"{r['weight']:g}",
                     f"{r['file_bytes'] / 1e6:.1f} MB{over}", f2(r["search_mean"]), f2(r["annotation_mean"]),
                     f"**{r['mean_recall']:.2f}**" if chosen else f2(r["mean_recall"])])
    return "\n\n".join([
        "## Querybank choice: `vsa eval querybank-tune` (Flickr8k dev)",
        "Written by `vsa eval querybank-tune --model weights/align.pt --features TOP_FEATS --json > "
        f"docs/results/eval-querybank-tune.json`. {d['photos']:,} {d['split']} photos, {d['sentences']:,} "
        f"sentences; rule: {d['rule']}.",
        table(["bank (sentences / photos)", "β", "weight", "model file", "dev search mean R@K",
               "dev annotation mean R@K", "dev mean R@K"], rows)])


def ablation(d: dict) -> str:
    return "\n\n".join([
        "## Ablation: do regions beat the full image? (Flickr8k test)",
        "Written by `vsa eval recall --features FEATS --also MODEL ... --json > "
        "docs/results/eval-recall-ablation.json` (one run per feature store; the ablation models are not shipped). "
        "The first three rows share one recipe "
        "at a fixed budget (6 epochs, lr 1e-3, decay at epoch 5, 300-d words, sum of hinges); the rest of ImageNet's "
        "top use the global member's recipe (20 epochs, lr 2e-3, decay at 15). The rows of the fine-tuned top come "
        "from `vsa eval recall --features TOP_NOFLIP --also H.pt --also B.pt --json`, those of the deeper top from "
        "`vsa eval recall --features TOP_FEATS --json` and, for its region model, `vsa train ensemble-part --part 0` "
        "then `vsa eval recall --features TOP_FEATS --model PART0 --json` (`weights/align.md`): on either top the "
        "region model no longer trails the full image, but is not above its interval either.",
        recall_rows(d)])


CAPTION_COLS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr"]


def _caption_row(name: str, r: dict) -> list[str]:
    lohi = r.get("CIDEr_ci")
    # Two decimals: a caption score is often read against a goal to the tenth (21.47 is not 21.5).
    return [name, *[f2(r.get(c)) for c in CAPTION_COLS], f"{lohi[0]:.1f}–{lohi[1]:.1f}" if lohi else "–",
            str(r.get("distinct captions", "–"))]


def captions(ens: dict, single: dict) -> str:
    def label(d: dict) -> str:
        rr, norm = d["rerank"], d.get("length_norm") or 0
        by = f"logprob / (words+1)^{norm:g} + {rr['weight']:g} · S'" if rr and norm else \
            f"weight {rr['weight']:g}" if rr else ""
        return f"beams re-ranked by `{Path(rr['model']).name}` ({by})" if rr else "beam search"

    rows = [_caption_row(f"`{Path(ens['model']).name}`, {label(ens)} (shipped default)", ens["rows"]["this model"]),
            _caption_row("the same, beam search alone", ens["rows"]["this model, beam only"]),
            _caption_row(f"`{Path(single['model']).name}`, {label(single)}", single["rows"]["this model"]),
            _caption_row(f"`{Path(single['model']).name}`, beam search alone", single["rows"]["this model, beam only"]),
            _caption_row("nearest neighbour (caption of the closest training photo)", ens["rows"]["nearest neighbour"]),
            _caption_row("paper, Flickr8k (1,000 test photos)", ens["rows"]["paper (Flickr8k, 1,000 test)"])]
    sample = random.Random(0).sample(ens["captions"], 10)
    return "\n\n".join([
        f"## Captions: `vsa eval caption` (beam {ens['beam']}, {ens['test_photos']:,} Flickr8k test photos)",
        f"Written by `vsa eval caption --features FEATS --rerank-features TOP_FEATS --json > "
        "docs/results/eval-caption-ensemble.json` (the shipped default) and `vsa eval caption --model caption "
        "--features FEATS --rerank-features TOP_FEATS --json > "
        f"docs/results/eval-caption.json`. {ens['note']}.",
        table(["model", *CAPTION_COLS, "CIDEr 95%", "distinct captions"], rows),
        "Ten test captions of the shipped default, picked with seed 0 (`random.Random(0).sample` of the report's "
        "captions):",
        "\n".join(f"- `{c['image']}`: {c['model']}" for c in sample)])


def region_captions(d: dict) -> str:
    cols = ["BLEU-1", "BLEU-4", "CIDEr"]
    rows = [[f"**{n}**" if n.startswith("region model, RoI") else n, *[f1(r[c]) for c in cols],
             "–" if not r.get("CIDEr_ci") else f"{r['CIDEr_ci'][0]:.1f}–{r['CIDEr_ci'][1]:.1f}",
             f"{r['distinct captions']:,}"] for n, r in d["rows"].items()]
    paper = d["paper"]["CIDEr"]
    rows.append([f"paper ({d['paper']['note']}): region model / full-frame model", "–", "–",
                 f"{paper['region_model']} / {paper['full_frame_model']}", "–", "–"])
    return "\n\n".join([
        f"## Region captions: `vsa eval regions` ({d['regions']:,} regions of the "
        + (f"{d['photos']:,} " if d["photos"] else "") + f"{d['split']} photos)",
        "Written by `vsa eval regions --features FEATS --json > docs/results/eval-regions.json` (its `examples` "
        f"cut to the first 20 here). References: {d['references']:,} held-out fragments of {d['min_words']}+ words, "
        f"the {d['split']} sentences aligned to their photos' regions ({d['snippets']}); beam {d['beam']}. They come "
        "from an alignment model, as the region model's training snippets do (those from an earlier `align.pt`, "
        "`weights/caption-regions.md`), not from human region descriptions, which favours the region model.",
        table(["model, region given as", *cols, "CIDEr 95%", "distinct"], rows)])


def calibration(d: dict) -> str:
    f, m = d["fitted_on"], d["metrics"]
    rows = [[f"{r['predicted']:.4f}", f"{r['observed']:.3f}", f"{r['hits']:,}"] for r in d["reliability"]]
    return "\n\n".join([
        f"## Calibration: `vsa eval calibrate` ({f['sentences']:,} {f['split']} sentences)",
        "Written by `vsa eval calibrate --plot docs/calibration.png --json > docs/results/eval-calibrate.json` "
        f"(it also writes `weights/{Path(d['model_file']).stem}.calibration.json`). Each {f['split']} photo's first "
        f"sentence searches the {f['photos']:,} {f['split']} photos as `vsa search` does; its top {f['top_k']} hits "
        f"are right when the hit is the photo it was written for. A Platt fit on {f['hits']:,} hits "
        f"({f['right']:,} right): `P(right) = 1 / (1 + exp(-({d['a']:.3f} · score {d['b']:+.3f})))`, Brier "
        f"{m['brier']:.4f}, expected calibration error {m['ece']:.4f}. Default floor: P ≥ {d['floor']:.4f} "
        f"(score {d['floor_score']:.3f}, {d['floor_rule']}).",
        table(["predicted P(right)", "observed share right", "hits"], rows),
        "![reliability plot](calibration.png)"])


def coco128(d: dict) -> str:
    s0, s1 = d["search"]["without bridge"], d["search"]["with bridge"]
    c = d["captions"]
    rows = [[f"class search mAP (`a CLASS`, {s0['classes']} classes)", f1(s0["mAP"]), f1(s1["mAP"])],
            ["class search precision@5", f1(s0["P@5"]), f1(s1["P@5"])],
            ["pointing game (relevant photos in the top 5)", f"{s0['pointing']:.1f}% ({s0['pointing_photos']} photos)",
             f"{s1['pointing']:.1f}% ({s1['pointing_photos']} photos)"],
            ["captions naming a labelled class (`--concepts`)", f"{c['without bridge']:.1f}%",
             f"{c['with bridge']:.1f}% ({c['constrained']} photos constrained)"]]
    if "flickr8k_test" in d:
        fl = d["flickr8k_test"]
        w0, w1 = list(fl["rows"].values())[0], list(fl["rows"].values())[-1]
        for key, label in (("image_annotation", "annotation"), ("image_search", "search")):
            inside = all(w0[key][f"R@{k}_ci"][0] <= w1[key][f"R@{k}"] <= w0[key][f"R@{k}_ci"][1] for k in (1, 5, 10))
            inside = "all within the intervals" if inside else "not all within the intervals"
            rows.append([f"Flickr8k test {label} R@1 / R@5 / R@10 (first {fl['photos']} photos)",
                         " / ".join(f1(w0[key][f"R@{k}"]) for k in (1, 5, 10)),
                         " / ".join(f1(w1[key][f"R@{k}"]) for k in (1, 5, 10)) + f" ({inside})"])
    size = ", ".join(f"{k} {v:g}" for k, v in d["bytes_per_region"].items())
    return "\n\n".join([
        "## Open vocabulary: `benchmarks/coco128.py` (126 COCO photos, never trained on)",
        "Written by `python benchmarks/coco128.py --model weights/align.pt --caption-model weights/caption.pt "
        f"--flickr-features TOP_FEATS --flickr-photos 200 --weight {d['weight']:g} --json "
        "docs/results/bench-coco128.json`. "
        "Search scores are the product's (querybank offsets included); captions without the bridge are what "
        "`vsa caption` writes (beams re-ranked).",
        table(["measure", "without bridge", f"with bridge (weight {d['weight']:g})"], rows),
        f"Bytes per region: {size}."])


# --------------------------------------------------------------------------- benchmarks


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


def _baseline_model(d: dict) -> str:
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


# --------------------------------------------------------------------------- the README's headline


def headline(recall: dict, caption: dict) -> str:
    """The README's one table: retrieval and captions on the Flickr8k test split beside the paper."""
    rec = {r["name"]: r["metrics"] for r in recall["rows"]}
    cap = caption["rows"]
    ours = recall["rows"][0]

    def retr(m: dict | None) -> list[str]:
        if m is None:
            return ["–"] * 4
        a, s = m["image_annotation"], m["image_search"]
        return [f1(a["R@1"]), f1(a["R@10"]), f1(s["R@1"]), f1(s["R@10"])]

    def gen(r: dict) -> list[str]:
        return [f2(r.get("BLEU-4")), f1(r.get("CIDEr"))]

    paper = next(n for n in rec if n.startswith("paper"))
    rows = [[f"this code: `{Path(ours['path']).name}`, `{Path(caption['model']).name}` (shipped)",
             *retr(ours["metrics"]), *gen(cap["this model"])]]
    reranked = next((r for r in recall["rows"] if "generator" in r), None)
    if reranked is not None:
        rows.append([f"this code, photo to text re-ranked by `{Path(reranked['path']).name}`",
                     *retr(reranked["metrics"]), "", ""])
    rows += [["baselines: global model (`align-global.pt`), nearest-neighbour caption",
              *retr(rec.get("global baseline")), *gen(cap["nearest neighbour"])],
             ["paper (Karpathy & Fei-Fei, Flickr8k)", *retr(rec[paper]), *gen(cap["paper (Flickr8k, 1,000 test)"])]]
    return table(["Flickr8k test (1,000 photos, 5,000 sentences)", "annotation R@1", "R@10", "search R@1", "R@10",
                  "BLEU-4", "CIDEr"], rows)


HEADLINE = ("<!-- headline: made by `make results` from docs/results/eval-recall.json and "
            "eval-caption-ensemble.json -->", "<!-- /headline -->")


def readme_with_headline(readme: str, results: Path = RESULTS) -> str:
    """The README with its headline table made again from the JSON (between the HEADLINE markers; a
    README without them is left as it is)."""
    if HEADLINE[0] not in readme:
        return readme
    start, end = readme.index(HEADLINE[0]) + len(HEADLINE[0]), readme.index(HEADLINE[1])
    load = [json.loads((results / f).read_text()) for f in ("eval-recall.json", "eval-caption-ensemble.json")]
    return readme[:start] + "\n\n" + headline(*load) + "\n\n" + readme[end:]


# --------------------------------------------------------------------------- the page

INTRO = """# Results

Every table below is rendered by `benchmarks/results.py` (`make results`) from a JSON file in
`docs/results/`; each names the command that writes its file. To update a figure, run that command (its JSON
into `docs/results/`), then `make results`. FEATS is a feature store of the Flickr8k photos
(`vsa features extract --dataset flickr8k --out FEATS`{feats}), what the caption generators read;
TOP_FEATS holds the same photos' features through the shipped alignment model's fine-tuned CNN top, with
test-time flips (`vsa features extract --model align --out TOP_FEATS`{top_feats}), what
`weights/align.pt` reads.

Protocol, like for like with the paper: models trained on Flickr8k's **6,000 training photos**, every choice
made on the **1,000 dev photos**, figures on all **1,000 test photos** (5,000 sentences). No test photo or
caption reaches training, the vocabulary or model selection (`tests/test_protocol.py` poisons the test split
and checks that nothing changes). Brackets are 95% bootstrap intervals over test photos (1,000 resamples);
ties count against the true item. Speed figures come from a 2-core machine shared with other work, so
compare ratios against the baseline of the same run rather than figures of different runs.
"""

# (files it reads, renderer): a section is left out while its files are missing.
SECTIONS: list[tuple[tuple[str, ...], Callable[..., str]]] = [
    (("eval-recall.json",), retrieval),
    (("eval-querybank-tune.json",), querybank),
    (("eval-generator-tune.json",), generator_tune),
    (("eval-recall-ablation.json",), ablation),
    (("eval-caption-ensemble.json", "eval-caption.json"), captions),
    (("eval-regions.json",), region_captions),
    (("eval-calibrate.json",), calibration),
    (("bench-coco128.json",), coco128),
    (("bench-dupes.json",), dupes),
    (("bench-regions.json",), regions_speed),
    (("bench-build.json",), lambda d: build_speed(
        d, "## Index builds on phone photos: `benchmarks/build.py`" + (
            "\n\nBaseline: the same code with the shipped alignment model as it was before its second global member "
            "(`align-prev.pt`, `weights/align.pt` of git d97ed14: the hybrid model and one global member, the same "
            "CNN top, a bank of 1,000 photos' 4-bit vectors); this: the shipped model, with the second global member "
            "(one more 512-d projection of each photo's full-image features, 2,048-d vectors) and a bank of 500 "
            "photos. A build scores each photo against the bank's sentences only. The querybank's sentences are "
            "encoded while the model loads, as in a long build (`load s`)." if _baseline_model(d) else ""),
        f"OMP_NUM_THREADS=2 python benchmarks/build.py{_baseline_model(d)} --repeat {d['repeat']} --json "
        "docs/results/bench-build.json")),
    (("bench-build-baseline.json",), lambda d: build_speed(
        d, "### Against the build before reduced-scale decoding (baseline: that checkout)",
        f"nice python benchmarks/build.py --baseline ../before --repeat {d['repeat']} --json "
        "docs/results/bench-build-baseline.json")),
    (("bench-search.json",), search_speed),
    (("bench-footprint.json",), footprint),
    (("bench-cold.json",), lambda d: cold(
        d, "## Cold start: `benchmarks/cold.py` (1,000 Flickr8k test photos, index format 2)\n\n"
        "`6aae1ad`: the code before `vsa caption` ran in numpy (a checkout of that commit as BEFORE); `.`: this one.",
        f"VSA_HOME=... OMP_NUM_THREADS=1 python benchmarks/cold.py --index f8k --runs {d['runs']} --code BEFORE "
        "--code . --json docs/results/bench-cold.json", True)),
    (("bench-cold-format1.json",), lambda d: cold(
        d, "### Before and after the numpy text encoder (index format 1)",
        f"OMP_NUM_THREADS=1 VSA_HOME=... nice python benchmarks/cold.py --index f8k --runs {d['runs']} --code "
        "../main --code . --json docs/results/bench-cold-format1.json", True)),
    (("bench-serve.json",), serve),
    (("bench-scale.json",), scale),
    (("bench-library.json",), library),
    (("bench-ray-build.json",), ray_build),
]


def _stores(results: Path) -> dict[str, str]:
    """Where the stores the figures came from lay, as the evaluations' own JSON records them."""
    def at(name: str, key: str) -> str:
        path = results / name
        store = json.loads(path.read_text()).get(key) if path.exists() else None
        return f"; here `{store}`" if store else ""
    return {"feats": at("eval-caption-ensemble.json", "features"), "top_feats": at("eval-recall.json", "features")}


def render(results: Path = RESULTS) -> str:
    parts = [INTRO.format(**_stores(results)).rstrip()]
    for files, fn in SECTIONS:
        if all((results / f).exists() for f in files):
            parts.append(fn(*[json.loads((results / f).read_text()) for f in files]))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    page, readme = render(), README.read_text()
    new_readme = readme_with_headline(readme)
    if a.check:
        stale = [p.name for p, new in ((PAGE, page), (README, new_readme)) if p.read_text() != new]
        if stale:
            print(f"{', '.join(stale)}: not what docs/results/*.json give: run `make results`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    README.write_text(new_readme)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(page.splitlines())} lines) and the headline table of README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
