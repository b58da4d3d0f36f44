"""`vsa eval recall|caption|regions`."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..align.mrf import DEFAULT_BETA
from ..core import paths
from ..core.errors import UsageError
from ..evaluation.captions import evaluate_captions
from ..evaluation.recall import evaluate_recall
from ..evaluation.regions import evaluate_regions
from ..train.baseline import train_global_baseline
from .align import BetaOpt, ModelOpt
from .caption import DEFAULT_MODEL, REGION_MODEL, RerankOpt, RerankWeightOpt
from .common import CaptionsOpt, DatasetOpt, RootOpt, err, load_dataset_opts, new_app, out, print_json, progress, stages

SplitOpt = Annotated[str, typer.Option(help="train | dev | test | all (a data set without splits, e.g. COCO: all)")]

app = new_app("Measure models the paper's way, beside baselines and the published figures.")


def _cell(metrics: dict, key: str) -> str:
    v = metrics.get(key)
    if v is None:
        return "-"
    ci = metrics.get(f"{key}_ci")
    return f"{v:.1f} [{ci[0]:.1f}-{ci[1]:.1f}]" if ci else f"{v:.1f}"


def recall_tables(report: dict) -> list[Table]:
    """One rich table per direction: rows are this model (and --also models), the baseline, chance
    and the paper."""
    keys = [f"R@{k}" for k in report["ks"]] + ["medr"]
    tables = []
    for direction, title in (("image_annotation", "Image annotation (image -> its sentences)"),
                             ("image_search", "Image search (sentence -> its image)")):
        t = Table(title=title, title_justify="left")
        t.add_column("model", no_wrap=True)
        for k in keys:
            t.add_column(k, justify="right", no_wrap=True)
        for row in report["rows"]:
            t.add_row(row["name"], *[_cell(row["metrics"][direction], k) for k in keys])
        tables.append(t)
    return tables


@app.command("recall")
def recall_cmd(
    model: Annotated[str, typer.Option(help="Alignment model file or name.")] = "align.pt",
    features: Annotated[Path | None, typer.Option(
        help="Feature store holding the split's photos (default: extract them into the cache).")] = None,
    k: Annotated[str, typer.Option("--k", help="Comma-separated K for Recall@K.")] = "1,5,10",
    split: SplitOpt = "test",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    also: Annotated[list[str] | None, typer.Option(
        help="Another alignment model for the same table (repeat the option): an ablation in one run.")] = None,
    baseline: Annotated[str, typer.Option(
        help="Global baseline model: auto (shipped align-global, else trained on --features) | PATH | none.")
    ] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recall@K and median rank, both directions, beside the global baseline, chance and the paper."""
    try:
        ks = tuple(int(x) for x in k.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--k {k!r}: expected comma-separated integers, e.g. 1,5,10") from None
    with stages() as on_stage:
        trainer = partial(train_global_baseline, device=device, on_baseline=lambda msg: err.print(msg))
        report = evaluate_recall(model, features, split, ks, baseline=baseline, device=device,
                                 dataset=load_dataset_opts(dataset, root, captions),
                                 train_baseline=trainer, also=also, on_stage=on_stage)
    if json_out:
        print_json(report)
        return
    wide = Console(highlight=False, width=max(out.width, 130))  # a pipe gets 80 columns: too narrow
    for t in recall_tables(report):
        wide.print(t)
    out.print(f"Note: {report['note']}.", markup=False)
    out.print(f"Global baseline: {report['baseline']}.", markup=False)


@app.command("caption")
def eval_caption_cmd(
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")] = 7,
    model: Annotated[str, typer.Option(help="Caption model file or name.")] = DEFAULT_MODEL,
    features: Annotated[Path | None, typer.Option(help="Feature store with the test (and training) photos; "
                                                       "default: extract them once into the cache.")] = None,
    length_norm: Annotated[float, typer.Option(min=0.0)] = 0.0,
    split: SplitOpt = "test",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example captions.")] = 0,
    rerank: RerankOpt = None,
    rerank_weight: RerankWeightOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """BLEU-1..4, METEOR and CIDEr (with its 95% interval) and the number of distinct captions on a
    split's photos (default: Flickr8k's 1,000 test photos): this model, the nearest-neighbour
    baseline and the paper's published figures, side by side."""
    # One bar (rich allows one live display): photos extracted into the cache, then photos captioned.
    with progress("features, then captions", None) as advance:
        res = evaluate_captions(paths.find_model(model), features, beam=beam, length_norm=length_norm,
                                device=device, on_extract=advance, on_progress=advance, split=split,
                                dataset=load_dataset_opts(dataset, root, captions), rerank_with=rerank,
                                rerank_weight=rerank_weight)
    if json_out:
        print_json(res)
        return
    out.print(caption_table(res), markup=False)
    for c in res["captions"][:show]:
        out.print(f"{c['image']}\t{c['model']}\t(nn: {c['nearest_neighbour']})", markup=False)


def caption_table(res: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr"]
    rr = res.get("rerank")
    lines = [f"{res['dataset']} captions, {res['test_photos']} {res['split']} photos, beam {res['beam']} "
             f"({res['cell']} model" + (f", re-ranked by {rr['model']}, weight {rr['weight']:g})" if rr else ")"),
             f"{'':30s}" + "".join(f"{c:>8s}" for c in cols) + f"{'CIDEr 95%':>14s}{'distinct':>10s}"]
    for name, row in res["rows"].items():
        cells = "".join(f"{row[c]:8.1f}" if row.get(c) is not None else f"{'-':>8s}" for c in cols)
        ci = row.get("CIDEr_ci")
        cells += f"{f'{ci[0]:.1f}-{ci[1]:.1f}':>14s}" if ci else f"{'':>14s}"
        cells += f"{row['distinct captions']:>10d}" if "distinct captions" in row else ""
        lines.append(f"{name:30s}{cells}")
    notes = {row["notes"] for row in res["rows"].values() if row.get("notes")}
    lines += [f"note: {res['note']}"] + [f"note: {n}" for n in sorted(notes)]
    return "\n".join(lines)


@app.command("regions")
def eval_regions_cmd(
    features: Annotated[Path, typer.Option(help="Feature store with the held-out photos (default region preset).")],
    snippets: Annotated[Path | None, typer.Option(help="Held-out snippets (vsa align export --split test); "
                                                       "default: align the split's sentences here.")] = None,
    region_model: Annotated[str, typer.Option(help="The region generator.")] = REGION_MODEL,
    full_model: Annotated[str, typer.Option(help="The full-frame generator.")] = "caption",
    model: ModelOpt = "align",
    beta: BetaOpt = DEFAULT_BETA,
    split: Annotated[str, typer.Option(help="Whose snippets are held out (never train).")] = "test",
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = 7,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example regions.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Region generator vs full-frame generator on held-out region snippets: BLEU and CIDEr of each
    model describing each region from its RoI feature and from the region cut out as a photo."""
    if split == "train":
        raise UsageError("the region generator trains on train snippets: evaluate on dev or test")
    with progress("crops, then captions", None, unit="regions") as advance:
        res = evaluate_regions(paths.find_model(region_model), paths.find_model(full_model), features,
                                     snippets, paths.find_model(model), beta=beta, beam=beam, split=split,
                                     device=device, on_progress=advance)
    if json_out:
        print_json(res)
        return
    out.print(region_table(res), markup=False)
    for e in res["examples"][:show]:
        out.print(f"{e['region']} {e['box']}  refs: {' | '.join(e['references'])}", markup=False)
        for k, v in e.items():
            if k not in ("region", "box", "references"):
                out.print(f"    {k}: {v}", markup=False)


def region_table(res: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr", "distinct captions"]
    lines = [f"Region captions: {res['regions']} regions of {res['photos']} {res['split']} photos, "
             f"{res['references']} held-out snippets ({res['min_words']}+ words), beam {res['beam']}",
             f"{'':36s}" + "".join(f"{c:>8s}" if c != "distinct captions" else f"{'distinct':>9s}" for c in cols)]
    for name, row in res["rows"].items():
        lines.append(f"{name:36s}" + "".join(f"{row[c]:8.1f}" for c in cols[:-1]) + f"{row[cols[-1]]:9d}")
    if (paper := res.get("paper", {}).get("CIDEr")) is not None:
        lines.append(f"paper, CIDEr: region model {paper['region_model']}, full-frame model "
                     f"{paper['full_frame_model']} ({res['paper']['note']})")
    lines.append(f"snippets: {res['snippets']}")
    return "\n".join(lines)
