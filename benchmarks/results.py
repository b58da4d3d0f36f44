"""docs/RESULTS.md, and the README's headline table, from the JSON that the evaluations and benchmarks
write (docs/results/*.json).

    python benchmarks/results.py            # what `make results` runs: rewrites both
    python benchmarks/results.py --check    # exit 1 when either is not what the JSON gives

A figure changes by running the command named above its table with its JSON redirected or written into
docs/results/, then `make results`. This script measures nothing and imports nothing of vsa_search, so
that the page can be checked in a second (tests/test_results.py). Its tables: results_eval.py (the
evaluations) and results_costs.py (the benchmarks), in results_format.py's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

# The renderers stand beside this script, however it is loaded (`make results`, or by file from the tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_costs import (  # noqa: E402
    baseline_model,
    build_speed,
    cold,
    dupes,
    footprint,
    library,
    ray_build,
    regions_speed,
    scale,
    search_speed,
    serve,
)
from results_eval import (  # noqa: E402
    ablation,
    calibration,
    captions,
    coco128,
    generator_tune,
    querybank,
    region_captions,
    retrieval,
)
from results_format import f1, f2, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "RESULTS.md"
README = ROOT / "README.md"

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
            "encoded while the model loads, as in a long build (`load s`)." if baseline_model(d) else ""),
        f"OMP_NUM_THREADS=2 python benchmarks/build.py{baseline_model(d)} --repeat {d['repeat']} --json "
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
