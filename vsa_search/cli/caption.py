"""`vsa caption PHOTO...`: one sentence per photo, or with --regions one per region with its box."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..captioning import caption_photos, caption_regions_of, photo_files
from ..captioning.load import load_captioning
from ..core import paths
from ..core.config import DEFAULT_BEAM
from ..core.device import pick_device
from ..core.errors import UsageError
from .common import err, out, print_json, progress

RerankOpt = Annotated[str | None, typer.Option(help="Alignment model that picks among the finished beams "
                                                    "(default: align, when it uses the same features; none: "
                                                    "beam search alone).")]
RerankWeightOpt = Annotated[float | None, typer.Option(min=0.0, help="Weight of the alignment score against "
                                                                      "the log-probability when re-ranking "
                                                                      "(default: the caption model's).")]
LengthNormOpt = Annotated[float | None, typer.Option(min=0.0, help="Rank sentences by logprob / (words+1)^this "
                                                                   "(default: the caption model's; 0: the plain "
                                                                   "log-probability).")]


def caption_cmd(
    photos: Annotated[list[Path], typer.Argument(help="Photos (or folders of photos) to describe.")],
    beam: Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")] = DEFAULT_BEAM,
    model: Annotated[str | None, typer.Option(help="Caption model file or name (default: caption-ensemble; "
                                                   "caption-regions with --regions).")] = None,
    max_len: Annotated[int | None, typer.Option(min=1, help="Most words per caption (default: the model's).")] = None,
    length_norm: LengthNormOpt = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when present).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    regions: Annotated[bool, typer.Option("--regions", help="Dense captions: one per region, with its box.")] = False,
    top: Annotated[int, typer.Option(min=0, help="With --regions: only the N surest regions (0: all).")] = 0,
    out_png: Annotated[Path | None, typer.Option("--out", help="With --regions: draw the boxes and captions.")] = None,
    concepts: Annotated[bool, typer.Option("--concepts", help="Let the photo's confident ImageNet concepts into "
                                           "the caption (constrained beam search).")] = False,
    rerank: RerankOpt = None,
    rerank_weight: RerankWeightOpt = None,
) -> None:
    """Describe each photo in one sentence, with its log-probability. A photo that cannot be read
    gets one error line on stderr; the others are still captioned; the exit code is then 1.
    --regions describes every region of one photo instead (the region generator, `vsa align`)."""

    if regions or out_png is not None or top:
        return region_caption_run(photos, beam, model, max_len, top, out_png, device, json_out, regions)
    model = model or paths.CAPTION_MODEL

    loaded, align, encoder = load_captioning(paths.find_model(model), rerank, device, concepts)
    with progress("reading photos", len(photo_files(photos))) as advance:
        # --json lists each photo's top concepts too; --concepts lets the confident ones into the caption.
        results = caption_photos(photos, loaded, beam=beam, max_len=max_len, length_norm=length_norm,
                                 encoder=encoder, on_progress=advance, concepts=concepts,
                                 list_concepts=5 if json_out else 0, rerank_with=align, rerank_weight=rerank_weight)
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


def region_caption_run(photos: list[Path], beam: int, model: str | None, max_len: int | None, top: int,
                       out_png: Path | None, device: str | None, json_out: bool, regions: bool) -> None:
    """`vsa caption PHOTO --regions`: a caption for every region of each photo, with its box."""
    if not regions:
        raise UsageError("--out and --top describe regions: add --regions")
    if out_png is not None and len(photos) != 1:
        raise UsageError(f"--out draws one photo; {len(photos)} were given")
    from ..models.captioner import load_caption
    from ..vision.regions import RegionEncoder

    loaded = load_caption(paths.find_model(model or paths.REGION_CAPTION_MODEL), device=pick_device(device))
    encoder = RegionEncoder(loaded.region_config, pick_device(device))
    results = caption_regions_of(photos, loaded, encoder, beam=beam, max_len=max_len, top=top or None,
                                 out_png=out_png)
    if json_out:
        print_json({"model": str(loaded.path), "beam": beam, "photos": results})
        return
    for r in results:
        out.print(r["photo"], markup=False)
        for c in r["regions"]:
            where = "full image" if c["region"] == 0 else f"region {c['region']}"
            out.print(f"  {where:11} box {c['box']}  {c['caption']}  ({c['logprob']:.2f})", markup=False)
    if out_png is not None:
        err.print(f"wrote {out_png}")
