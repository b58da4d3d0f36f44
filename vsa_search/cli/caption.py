"""`vsa caption PHOTO...`, `vsa train caption` and `vsa eval caption`: the caption generator's commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from .. import config, paths
from .common import err, out, print_json, progress

DEFAULT_MODEL = "caption"  # models/caption.pt, shipped


def caption_cmd(
    photos: Annotated[list[Path], typer.Argument(help="Photos (or folders of photos) to describe.")],
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")] = 7,
    model: Annotated[str | None, typer.Option(help="Caption model file or name (default: caption; "
                                                   "caption-regions with --regions).")] = None,
    max_len: Annotated[int | None, typer.Option(min=1, help="Most words per caption (default: the model's).")] = None,
    length_norm: Annotated[float, typer.Option(min=0.0, help="Rank by logprob / (words+1)^this.")] = 0.0,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    regions: Annotated[bool, typer.Option("--regions", help="Dense captions: one per region, with its box.")] = False,
    top: Annotated[int, typer.Option(min=0, help="With --regions: only the N surest regions (0: all).")] = 0,
    out_png: Annotated[Path | None, typer.Option("--out", help="With --regions: draw the boxes and captions.")] = None,
    concepts: Annotated[bool, typer.Option("--concepts", help="Let the photo's confident ImageNet concepts into "
                                           "the caption (constrained beam search).")] = False,
) -> None:
    """Describe each photo in one sentence, with its log-probability. A photo that cannot be read
    gets one error line on stderr; the others are still captioned; the exit code is then 1.
    --regions describes every region of one photo instead (the region generator, `vsa align`)."""

    if regions or out_png is not None or top:
        from .align import region_caption_run

        return region_caption_run(photos, beam, model, max_len, top, out_png, device, json_out, regions)
    model = model or DEFAULT_MODEL

    from ..captioner import caption_photos, load_caption, photo_files
    from ..train import pick_device

    loaded = load_caption(paths.find_model(model), device=pick_device(device))
    if concepts or json_out:  # the photo's concepts listed (and, with --concepts, in the sentence): conscap.py
        from ..conscap import caption_photos as concept_captions

        with progress("reading photos", len(photo_files(photos))) as advance:
            rows = concept_captions(photos, loaded, beam, max_len, length_norm, constrain=concepts,
                                    on_progress=advance)
        for r in rows:
            if r.get("error"):
                err.print(f"[bold red]error:[/] {r['error']}", markup=True, highlight=False)
        good = [r for r in rows if not r.get("error")]
        if json_out:
            print_json(good)
        else:
            for r in good:
                out.print(f"{r['photo']}\t{r['caption']}\t({r['logprob']:.2f})", markup=False)
        if len(good) < len(rows):
            raise typer.Exit(1)
        return
    with progress("reading photos", len(photo_files(photos))) as advance:
        results = caption_photos(photos, loaded, beam=beam, max_len=max_len, length_norm=length_norm,
                                 on_progress=advance)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        err.print(f"[bold red]error:[/] {r.error}", markup=True, highlight=False)
    rows = [r.to_dict() for r in results if r.error is None]
    if json_out:
        print_json(rows)
    else:
        for r in rows:
            out.print(f"{r['photo']}\t{r['caption']}\t({r['logprob']:.2f})", markup=False)
    if failed:
        raise typer.Exit(1)


def train_caption_cmd(
    features: Annotated[Path, typer.Option(help="Feature store (vsa features extract) of the Flickr8k photos.")],
    out_path: Annotated[Path, typer.Option("--out", help="Model file to write (rewritten every epoch).")],
    preset: Annotated[str, typer.Option(help="Model preset: " + ", ".join(config.CAPTION_PRESETS))] = "default",
    cell: Annotated[str | None, typer.Option(help="rnn (the paper's) | lstm (default: the preset's).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="rmsprop (the paper's) | adam.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (early stopping may end sooner).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --out.")] = False,
    slim: Annotated[bool, typer.Option(help="Drop the optimizer state from the final file (to ship it).")] = False,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                             help="bf16/fp16 autocast (default: on for CUDA, off on CPU).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    regions: Annotated[Path | None, typer.Option(help="Snippets (vsa align export --split train) to train on "
                                                      "too: the region generator.")] = None,
    init: Annotated[str | None, typer.Option(help="Start from this caption model (fine-tune).")] = None,
) -> None:
    """Train the caption generator on full-image features and the training sentences (early
    stopping on dev perplexity); the best epoch's weights are saved in --out after every epoch.
    With --regions, region snippets (region feature, sentence fragment) are training pairs too."""
    from ..train import train_caption

    cfg = config.preset(config.CAPTION_PRESETS, preset)
    changes = {k: v for k, v in {"cell": cell, "optimizer": optimizer, "lr": lr, "epochs": epochs}.items()
               if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    # Batches per epoch are known only once the store is read; the bar's total grows with them.
    with progress("training", None, unit="batches") as advance:
        report = train_caption(features, out_path, cfg, resume=resume, device=device, keep_train_state=not slim,
                               amp=amp, on_batch=advance, on_epoch=lambda r: err.print(_epoch_line(r), highlight=False),
                               regions=regions, init=paths.find_model(init) if init else None)
    if json_out:
        print_json(report)
        return
    b = report["best"]
    cider = f", dev CIDEr {b['dev_cider']:.1f}" if "dev_cider" in b else ""
    out.print(f"{out_path}: best epoch {b['epoch']} (perplexity {b['dev_ppl']:.2f}{cider}), "
              f"{len(report['history'])} epochs this run, {report['seconds']:.0f} s on {report['device']}"
              + (", stopped early" if report["stopped_early"] else ""))


def _epoch_line(r: dict) -> str:
    ppl = f"dev perplexity {r['dev_ppl']:.2f}" if "dev_ppl" in r else f"train perplexity {r['train_ppl']:.2f}"
    cider = f", dev CIDEr {r['dev_cider']:.1f}" if "dev_cider" in r else ""
    return f"epoch {r['epoch']}: train loss {r['train_loss']:.3f}, {ppl}{cider}, {r['seconds']:.0f} s"


def eval_caption_cmd(
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")] = 7,
    model: Annotated[str, typer.Option(help="Caption model file or name.")] = DEFAULT_MODEL,
    features: Annotated[Path | None, typer.Option(help="Feature store with the test (and training) photos; "
                                                       "default: extract them once into the cache.")] = None,
    length_norm: Annotated[float, typer.Option(min=0.0)] = 0.0,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    show: Annotated[int, typer.Option(min=0, help="Print this many example captions.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """BLEU-1..4, METEOR and CIDEr on the Flickr8k test photos present: this model, the
    nearest-neighbour baseline and the paper's published figures, side by side."""
    from ..evaluate import evaluate_captions

    # One bar (rich allows one live display): photos extracted into the cache, then photos captioned.
    with progress("features, then captions", None) as advance:
        res = evaluate_captions(paths.find_model(model), features, beam=beam, length_norm=length_norm,
                                device=device, on_extract=advance, on_progress=advance)
    if json_out:
        print_json(res)
        return
    out.print(caption_table(res), markup=False)
    for c in res["captions"][:show]:
        out.print(f"{c['image']}\t{c['model']}\t(nn: {c['nearest_neighbour']})", markup=False)


def caption_table(res: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr"]
    lines = [f"Flickr8k captions, {res['test_photos']} test photos, beam {res['beam']} ({res['cell']} model)",
             f"{'':28s}" + "".join(f"{c:>8s}" for c in cols)]
    for name, row in res["rows"].items():
        cells = "".join(f"{row[c]:8.1f}" if row.get(c) is not None else f"{'-':>8s}" for c in cols)
        lines.append(f"{name:28s}{cells}")
    notes = {row["notes"] for row in res["rows"].values() if row.get("notes")}
    lines += [f"note: {res['note']}"] + [f"note: {n}" for n in sorted(notes)]
    return "\n".join(lines)
