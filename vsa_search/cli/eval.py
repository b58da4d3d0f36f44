"""`vsa eval recall|caption`."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UsageError
from ..evaluate import evaluate_recall
from .common import err, new_app, out, print_json, progress

app = new_app("Measure models the paper's way, beside baselines and the published figures.")


def _cell(metrics: dict, key: str) -> str:
    v = metrics.get(key)
    if v is None:
        return "-"
    ci = metrics.get(f"{key}_ci")
    return f"{v:.1f} [{ci[0]:.1f}-{ci[1]:.1f}]" if ci else f"{v:.1f}"


def recall_tables(report: dict) -> list[Table]:
    """One rich table per direction: rows are this model, the baseline, chance and the paper."""
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
    split: Annotated[str, typer.Option(help="train | dev | test")] = "test",
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
    # Only a run without --features extracts photos (into the cache), so only it shows a bar.
    bar = progress(f"extracting {split} photos", None) if features is None else nullcontext(None)
    with bar as advance:
        report = evaluate_recall(model, features, split, ks, baseline=baseline, device=device,
                                 on_extract=advance, on_baseline=lambda msg: err.print(msg))
    if json_out:
        print_json(report)
        return
    wide = Console(highlight=False, width=max(out.width, 130))  # a pipe gets 80 columns: too narrow
    for t in recall_tables(report):
        wide.print(t)
    out.print(f"Note: {report['note']}.", markup=False)
    out.print(f"Global baseline: {report['baseline']}.", markup=False)


# The caption table's command lives beside `vsa caption` (cli/caption.py).
from .caption import eval_caption_cmd  # noqa: E402

app.command("caption")(eval_caption_cmd)

# Region captions (region vs full-frame generator) live beside `vsa align` (cli/align.py).
from .align import eval_regions_cmd  # noqa: E402

app.command("regions")(eval_regions_cmd)
