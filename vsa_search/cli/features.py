"""`vsa features ...`: the feature store used by training and evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..core import config, paths
from ..core.errors import UsageError
from ..data.datasets import load_dataset
from ..models.alignment import load_align
from ..vision.features import FeatureStore
from ..vision.regions import EXTRACT_BATCH
from ..vision.trunk import extract_maps, extract_with_top
from .common import CaptionsOpt, DatasetOpt, RootOpt, err, load_dataset_opts, new_app, out, print_json, progress

app = new_app("Region boxes and CNN features of a data set's photos, stored in LMDB.")


@app.command("extract")
def extract_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Feature store directory (LMDB).")],
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    split: Annotated[str | None, typer.Option(help="Only this split (train/dev/test).")] = None,
    preset: Annotated[str | None, typer.Option(help="Region preset: " + ", ".join(config.REGION_PRESETS)
                                                    + " (default: default).")] = None,
    model: Annotated[str | None, typer.Option(help="Extract with this alignment model's extractor (file or name) "
                                                   "instead of a preset: its region config and fine-tuned CNN "
                                                   "top, if it has one.")] = None,
    maps: Annotated[Path | None, typer.Option(help="With --model of a fine-tuned top: the photos' stored maps "
                                                   "(vsa features maps), which the top runs on, fast.")] = None,
    boxes: Annotated[Path | None, typer.Option(help="With --maps: the store of ImageNet's features of the same "
                                                    "photos (vsa features extract --preset P), whose boxes and "
                                                    "concepts are reused. Photos missing from either store are "
                                                    "extracted from their files.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = EXTRACT_BATCH,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Extract boxes and features for every present photo; resumes an interrupted run."""
    if model is not None and preset is not None:
        raise UsageError("give --preset or --model, not both (the model's extractor is its own)")
    if (maps is not None or boxes is not None) and model is None:
        raise UsageError("--maps and --boxes go with --model (a model with a fine-tuned CNN top)")
    loaded = load_align(paths.find_model(model)) if model is not None else None
    cfg = loaded.region_config if loaded is not None else config.preset(config.REGION_PRESETS, preset or "default")
    ds = load_dataset_opts(dataset, root, captions) or load_dataset("flickr8k")
    recs = ds.present(split)
    photos = {r.image_id: r.path for r in recs}
    missing = len(ds.missing(split))
    t0 = time.perf_counter()
    with progress("extracting", len(photos)) as advance:
        report = extract_with_top(photos, out_dir, cfg, loaded.top if loaded is not None else None, maps, boxes,
                                  device=device, batch_size=batch_size, on_progress=advance)
    dt = time.perf_counter() - t0
    summary = {"store": str(out_dir), "extractor": cfg.extractor_id(), "photos": len(photos),
               "extracted": report.extracted, "from_maps": report.from_maps, "already_stored": report.already,
               "skipped": report.skipped, "missing_on_disk": missing, "seconds": round(dt, 1)}
    if json_out:
        print_json(summary)
        return
    rate = report.extracted / dt if dt > 0 else 0.0
    via = f", {report.from_maps} of them from maps" if maps is not None else ""
    out.print(f"{out_dir}: {report.extracted} extracted ({rate:.1f} photos/s){via}, "
              f"{report.already} already stored, {len(report.skipped)} skipped, "
              f"{missing} listed but missing on disk")
    for image_id, why in report.skipped.items():
        err.print(f"skipped {image_id}: {why}")


@app.command("maps")
def maps_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Map store directory (LMDB).")],
    dataset: DatasetOpt = "flickr8k",
    root: RootOpt = None,
    captions: CaptionsOpt = None,
    split: Annotated[str | None, typer.Option(help="Only this split (train/dev/test).")] = None,
    preset: Annotated[str, typer.Option(help="Where the CNN is cut: " + ", ".join(config.MAP_PRESETS))] = "default",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Store the frozen lower CNN stages' output map of every present photo (float16), the input of
    `vsa train finetune`; resumes an interrupted run."""
    cfg = config.preset(config.MAP_PRESETS, preset)
    ds = load_dataset_opts(dataset, root, captions) or load_dataset("flickr8k")
    photos = {r.image_id: r.path for r in ds.present(split)}
    t0 = time.perf_counter()
    with progress("extracting maps", len(photos)) as advance:
        report = extract_maps(photos, out_dir, cfg, batch_size=batch_size, on_progress=advance)
    dt = time.perf_counter() - t0
    summary = {"store": str(out_dir), "maps": cfg.map_id(), "photos": len(photos), **report, "seconds": round(dt, 1)}
    if json_out:
        print_json(summary)
        return
    out.print(f"{out_dir}: {report['extracted']} maps extracted in {dt:.0f} s, {report['already']} already stored, "
              f"{len(report['skipped'])} skipped")  # type: ignore[arg-type]
    for image_id, why in report["skipped"].items():  # type: ignore[union-attr]
        err.print(f"skipped {image_id}: {why}")


@app.command("info")
def info_cmd(store: Annotated[Path, typer.Argument(help="Feature store directory.")],
             json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show what a feature store holds."""
    with FeatureStore(store, readonly=True) as fs:
        info = {"store": str(store), "extractor": fs.extractor_id, "photos": len(fs),
                "skipped": len(fs.skipped()), "max_regions": fs.config.max_regions,
                "cnn_top": fs.config.top or "ImageNet's"}
    if json_out:
        print_json(info)
    else:
        out.print("\n".join(f"{k}: {v}" for k, v in info.items()))
