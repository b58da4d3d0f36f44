"""docs/RESULTS.md's tables of the evaluations (`vsa eval ... --json`): retrieval, the querybank and
generator choices, the ablation, captions, region captions, calibration and coco128."""

from __future__ import annotations

import random
from pathlib import Path

from results_format import ci, f1, f2, table


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
