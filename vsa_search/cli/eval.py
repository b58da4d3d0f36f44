"""`vsa eval recall|caption|rerank-weight|querybank-tune|regions|calibrate`."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..align.mrf import DEFAULT_BETA
from ..core import paths
from ..core.config import DEFAULT_BEAM
from ..core.errors import UsageError
from ..evaluation.captions import RERANK_GRID, evaluate_captions, tune_rerank_weight
from ..evaluation.recall import evaluate_recall
from ..evaluation.regions import evaluate_regions
from ..train.baseline import train_global_baseline
from ..train.generator_tune import ANNOTATION_WEIGHTS, SEARCH_WEIGHTS, tune_generator
from ..train.querybank_tune import BETAS as QB_BETAS
from ..train.querybank_tune import MAX_MODEL_BYTES as QB_MAX_BYTES
from ..train.querybank_tune import SIZES as QB_SIZES
from ..train.querybank_tune import WEIGHTS as QB_WEIGHTS
from ..train.querybank_tune import tune_querybank
from .align import BetaOpt, ModelOpt
from .caption import LengthNormOpt, RerankOpt, RerankWeightOpt
from .common import CaptionsOpt, DatasetOpt, RootOpt, err, load_dataset_opts, new_app, out, print_json, progress, stages

SplitOpt = Annotated[str, typer.Option(help="train | dev | test | all (a data set without splits, e.g. COCO: all)")]
RerankFeaturesOpt = Annotated[Path | None, typer.Option(
    help="Feature store of the re-ranker's own features, when they come from a fine-tuned CNN top (default: "
         "the evaluation cache of its extractor, $VSA_HOME/cache/features/<extractor id>).")]

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
    model: Annotated[str, typer.Option(help="Alignment model file or name.")] = paths.ALIGN_MODEL,
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
    generator: Annotated[str | None, typer.Option(
        help="A caption model that re-ranks this model's top candidates (one more row).")] = None,
    generator_features: Annotated[Path | None, typer.Option(
        help="The generator's feature store holding the split's photos (default: extract them).")] = None,
    generator_weights: Annotated[str | None, typer.Option(
        help="ANNOTATION,SEARCH weights of the generator's term (default: annotation's chosen on dev, search 0 "
             "as `vsa search` has it).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recall@K and median rank, both directions, beside the global baseline, chance and the paper."""
    try:
        ks = tuple(int(x) for x in k.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--k {k!r}: expected comma-separated integers, e.g. 1,5,10") from None
    gw = _numbers(generator_weights, "--generator-weights") if generator_weights is not None else None
    if gw is not None and len(gw) != 2:
        raise UsageError(f"--generator-weights {generator_weights!r}: expected ANNOTATION,SEARCH, e.g. 0.04,0.1")
    with stages() as on_stage:
        trainer = partial(train_global_baseline, device=device, on_baseline=lambda msg: err.print(msg))
        report = evaluate_recall(model, features, split, ks, baseline=baseline, device=device,
                                 dataset=load_dataset_opts(dataset, root, captions),
                                 train_baseline=trainer, also=also, on_stage=on_stage, generator=generator,
                                 generator_features=generator_features, generator_weights=gw)
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
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")] = DEFAULT_BEAM,
    model: Annotated[str, typer.Option(help="Caption model file or name.")] = paths.CAPTION_MODEL,
    features: Annotated[Path | None, typer.Option(help="Feature store with the test (and training) photos; "
                                                       "default: extract them once into the cache.")] = None,
    length_norm: LengthNormOpt = None,
    split: SplitOpt = "test",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example captions.")] = 0,
    rerank: RerankOpt = None,
    rerank_weight: RerankWeightOpt = None,
    rerank_features: RerankFeaturesOpt = None,
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
                                rerank_weight=rerank_weight, rerank_features=rerank_features)
    if json_out:
        print_json(res)
        return
    out.print(caption_table(res), markup=False)
    for c in res["captions"][:show]:
        out.print(f"{c['image']}\t{c['model']}\t(nn: {c['nearest_neighbour']})", markup=False)


@app.command("rerank-weight")
def rerank_weight_cmd(
    features: Annotated[Path, typer.Option(help="Feature store holding the split's photos (vsa features extract).")],
    model: Annotated[str, typer.Option(help="Caption model file or name.")] = paths.CAPTION_MODEL,
    weights: Annotated[str, typer.Option(help="Comma-separated weights to try.")] =
        ",".join(f"{w:g}" for w in RERANK_GRID),
    length_norms: Annotated[str, typer.Option(help="Comma-separated length normalisations to try with each "
                                                   "weight (sentences ranked by logprob / (words+1)^this).")] = "0",
    meteor: Annotated[bool, typer.Option("--meteor", help="METEOR of every pair too (slower).")] = False,
    split: Annotated[str, typer.Option(help="dev (never test).")] = "dev",
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = DEFAULT_BEAM,
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    rerank: RerankOpt = None,
    rerank_features: RerankFeaturesOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Choose the re-ranking weight (and length normalisation) on dev: BLEU-4, CIDEr and distinct captions
    of each pair on the same finished beams, and of the pairs within 0.1 of the best BLEU-4 (with --meteor:
    the best sum of BLEU-4 and METEOR) the one with the best CIDEr (what `vsa train caption-ensemble
    --rerank-weight --length-norm` takes)."""
    grid, norms = _numbers(weights, "--weights"), _numbers(length_norms, "--length-norms")
    with progress(f"captioning {split} photos", None) as advance:
        weight, res = tune_rerank_weight(paths.find_model(model), features, split, grid, beam=beam, device=device,
                                         dataset=load_dataset_opts(dataset, root, captions), rerank_with=rerank,
                                         on_progress=advance, rerank_features=rerank_features, length_norms=norms,
                                         meteor=meteor)
    if json_out:
        print_json({**res, "weight": weight})
        return
    out.print(f"{res['model']} re-ranked by {res['rerank']}: {res['photos']} {res['split']} photos of "
              f"{res['dataset']}, beam {res['beam']}", markup=False)
    out.print(f"{'length norm':>12s}{'weight':>8s}{'BLEU-4':>8s}{'METEOR':>8s}{'CIDEr':>8s}{'distinct':>10s}"
              f"{'words':>7s}")
    for r in res["rows"]:
        m = f"{r['METEOR']:8.1f}" if r.get("METEOR") is not None else f"{'-':>8s}"
        out.print(f"{r['length_norm']:12g}{r['weight']:8g}{r['BLEU-4']:8.1f}{m}{r['CIDEr']:8.1f}"
                  f"{r['distinct captions']:10d}{r['words']:7.2f}")
    out.print(f"weight {weight:g}, length normalisation {res['length_norm']:g} ({res['rule']})")


def _numbers(text: str, opt: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{opt} {text!r}: expected comma-separated numbers, e.g. 0.5,1") from None


def _sizes(text: str) -> tuple[tuple[int, int, int], ...]:
    try:
        parts = [[int(v) for v in x.split("/")] for x in text.split(",") if x.strip()]
        if any(len(p) not in (2, 3) for p in parts):
            raise ValueError
        return tuple((p[0], p[1], p[2] if len(p) == 3 else 8) for p in parts)
    except ValueError:
        raise UsageError(f"--sizes {text!r}: expected SENTENCES/PHOTOS[/BITS], e.g. 1000/200,5000/1000/4") from None


@app.command("querybank-tune")
def querybank_tune_cmd(
    features: Annotated[Path, typer.Option(help="Feature store holding the training and dev photos.")],
    model: Annotated[str, typer.Option(help="Alignment model file or name (its own bank is left "
                                            "aside).")] = paths.ALIGN_MODEL,
    sizes: Annotated[str, typer.Option(help="Bank sizes to try, SENTENCES/PHOTOS[/BITS of the photos' vectors, "
                                            "8 or 4], comma-separated.")] =
        ",".join(f"{s}/{p}/{b}" for s, p, b in QB_SIZES),
    betas: Annotated[str, typer.Option(help="β values to try.")] = ",".join(f"{b:g}" for b in QB_BETAS),
    weights: Annotated[str, typer.Option(help="Weights to try.")] = ",".join(f"{w:g}" for w in QB_WEIGHTS),
    max_mb: Annotated[float, typer.Option(help="Size cap of the model file, MB (10^6 bytes).")] =
        QB_MAX_BYTES / 1e6,
    seed: Annotated[int, typer.Option(help="Seed of the training photos drawn (as vsa train querybank).")] = 0,
    split: Annotated[str, typer.Option(help="dev (never test).")] = "dev",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Choose the querybank on dev: every bank size x β x weight, drawn from the training split as `vsa train
    querybank` draws it, scored on the dev photos (mean Recall@{1,5,10}, both directions), and the best bank
    that keeps the model file within the size cap (what `vsa train querybank` takes)."""
    if split == "test":
        raise UsageError("choose the querybank on dev, never on test")
    grid = _sizes(sizes), _numbers(betas, "--betas"), _numbers(weights, "--weights")
    n = len(grid[0]) * len(grid[1]) * len(grid[2])
    with progress(f"scoring {split} photos with each bank", n, unit="banks") as advance:
        pick, res = tune_querybank(paths.find_model(model), features, split, *grid, seed=seed,
                                   max_bytes=int(max_mb * 1e6), dataset=load_dataset_opts(dataset, root, captions),
                                   device=device, on_progress=advance)
    if json_out:
        print_json({**res, "pick": pick})
        return
    out.print(f"{res['model']}: {res['photos']} {res['split']} photos, {res['sentences']} sentences of "
              f"{res['dataset']}; banks from {res['train_photos_available']} training photos, seed {res['seed']}",
              markup=False)
    out.print(f"{'sentences':>10s}{'photos':>8s}{'bits':>6s}{'beta':>6s}{'weight':>8s}{'file MB':>9s}{'search':>8s}"
              f"{'annot.':>8s}{'mean R@K':>10s}", markup=False)
    out.print(f"{'(none)':>10s}{'':8s}{'':6s}{'':6s}{0:8g}{'':9s}{'':8s}{'':8s}"
              f"{res['without_querybank']['mean_recall']:10.2f}", markup=False)
    for r in res["rows"]:
        over = " (over the cap)" if r["file_bytes"] > res["max_bytes"] else ""
        out.print(f"{r['sentences']:10d}{r['photos']:8d}{r['bits']:6d}{r['beta']:6g}{r['weight']:8g}"
                  f"{r['file_bytes'] / 1e6:9.1f}{r['search_mean']:8.2f}{r['annotation_mean']:8.2f}"
                  f"{r['mean_recall']:10.2f}{over}", markup=False)
    if pick is None:
        raise UsageError(f"no bank keeps the model file within {res['max_bytes']:,} bytes")
    out.print(f"pick: {pick['sentences']} sentences, {pick['photos']} photos ({pick['bits']} bits), "
              f"β {pick['beta']:g}, weight "
              f"{pick['weight']:g} ({res['rule']})", markup=False)


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
    region_model: Annotated[str, typer.Option(help="The region generator.")] = paths.REGION_CAPTION_MODEL,
    full_model: Annotated[str, typer.Option(help="The full-frame generator.")] = "caption",
    model: ModelOpt = paths.ALIGN_MODEL,
    align_features: Annotated[Path | None, typer.Option(
        help="Feature store of the aligner's own features, when they come from a fine-tuned CNN top (default: "
             "the evaluation cache of its extractor).")] = None,
    beta: BetaOpt = DEFAULT_BETA,
    split: Annotated[str, typer.Option(help="Whose snippets are held out (never train).")] = "test",
    beam: Annotated[int, typer.Option(min=1, help="Beam size.")] = DEFAULT_BEAM,
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
                                     device=device, on_progress=advance, align_features=align_features)
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


@app.command("calibrate")
def calibrate_cmd(
    features: Annotated[Path | None, typer.Option(help="Feature store holding the split's photos (default: the "
                                                       "evaluation cache for the model's extractor).")] = None,
    model: Annotated[str, typer.Option(help="Alignment model file or name.")] = paths.ALIGN_MODEL,
    split: Annotated[str, typer.Option(help="dev (never test).")] = "dev",
    per_photo: Annotated[int, typer.Option(min=1, max=5, help="Sentences per photo that search (the first N "
                                                            "of each photo).")] = 1,
    out_path: Annotated[Path | None, typer.Option("--out", help="Where to write it (default: beside the model, "
                                                               "weights/NAME.calibration.json).")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw the reliability plot to this PNG "
                                                   "(needs matplotlib: the dev extra).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Calibrate `vsa search` scores on dev: the probability that a hit is right (a Platt fit on every dev
    sentence's top 10 hits), and the default relevance floor; written beside the model."""
    from ..evaluation.calibrate import calibrate
    from ..models.alignment import load_align

    loaded = load_align(paths.find_model(model))
    store = features or paths.cache_dir() / "features" / loaded.region_config.extractor_id()
    if not store.exists():
        raise UsageError(f"{store}: no feature store (extract the {split} photos with "
                         f"`vsa features extract --model {model} --split {split} --out {store}`)")
    with progress(f"encoding, then searching {split} photos", None) as advance:
        res = calibrate(loaded, store, split, per_photo, out_path, plot, on_progress=advance)
    if json_out:
        print_json(res)
        return
    f, m = res["fitted_on"], res["metrics"]
    out.print(f"{f['sentences']:,} {f['split']} sentences, top {f['top_k']} hits each ({f['hits']:,} hits, "
              f"{f['right']:,} right): P(right) = 1/(1+exp(-({res['a']:.3f}·score + {res['b']:.3f})))", markup=False)
    out.print(f"Brier {m['brier']:.4f}, ECE {m['ece']:.4f}; default floor P >= {res['floor']:.3f} "
              f"(score {res['floor_score']:.3f}: {res['floor_rule']})", markup=False)
    out.print(f"wrote {res['written']}" + (f" and {res['plot']}" if "plot" in res else ""), markup=False)


@app.command("generator-tune")
def generator_tune_cmd(
    features: Annotated[Path, typer.Option(help="The alignment model's feature store (the dev photos).")],
    generator_features: Annotated[Path | None, typer.Option(
        help="The generator's feature store holding the dev photos (default: extract them).")] = None,
    model: Annotated[str, typer.Option(help="Alignment model file or name.")] = paths.ALIGN_MODEL,
    generator: Annotated[str, typer.Option(help="Caption model file or name.")] = paths.CAPTION_MODEL,
    annotation_weights: Annotated[str, typer.Option(help="Annotation weights to try.")] =
        ",".join(f"{w:g}" for w in ANNOTATION_WEIGHTS),
    search_weights: Annotated[str, typer.Option(help="Search weights to try.")] =
        ",".join(f"{w:g}" for w in SEARCH_WEIGHTS),
    split: Annotated[str, typer.Option(help="dev (never test).")] = "dev",
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Choose on dev the weights with which the caption generator re-ranks retrieval (`vsa eval recall
    --generator`): each weight's mean Recall@{1,5,10} per direction, and each direction's best."""
    grid = _numbers(annotation_weights, "--annotation-weights"), _numbers(search_weights, "--search-weights")
    with stages() as on_stage:
        res = tune_generator(model, features, generator, generator_features, split, *grid,
                             dataset=load_dataset_opts(dataset, root, captions), device=device, on_stage=on_stage)
    if json_out:
        print_json(res)
        return
    out.print(f"{res['model']} re-ranked by {res['generator']}: {res['photos']} {res['split']} photos, top "
              f"{res['depth']}, prior over {res['prior_photos']} training photos", markup=False)
    for name, rows in res["rows"].items():
        for r in rows:
            m = r["metrics"]
            out.print(f"{name:>10s} w {r['weight']:<6g} R@1 {m['R@1']:5.1f}  R@5 {m['R@5']:5.1f}  R@10 "
                      f"{m['R@10']:5.1f}  mean {r['mean_recall']:6.2f}", markup=False)
    out.print(f"pick: annotation {res['pick']['annotation']:g}, search {res['pick']['search']:g} ({res['rule']})",
              markup=False)
