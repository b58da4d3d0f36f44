"""`vsa search "TEXT"` (photos for words), `vsa search --like PHOTO [TEXT]` (photos like a photo) and
`vsa search --image PHOTO` (sentences for a photo)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from .. import index as ix
from ..core.errors import UsageError
from ..index import query as srch
from ..index.filters import FilterReport, MetaFilter, search_filtered
from ..index.floor import Floored, apply_floor, load_calibration
from ..index.likeness import shown_pairs
from ..index.minus import MINUS_WEIGHT
from ..models.querytext import printable, query_tokens_or_fail
from .common import AfterOpt, BeforeOpt, CameraOpt, KmOpt, NearOpt, err, filter_notes, out, print_json, print_paths


def search_cmd(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many results.")] = 10,
    index: Annotated[str, typer.Option("--index", help="Index name (or path).")] = ix.DEFAULT_NAME,
    image: Annotated[Path | None, typer.Option("--image", help="Find sentences for this photo instead "
                                                               "(needs `vsa index text`).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Alignment model (default: the index's).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    paths_out: Annotated[bool, typer.Option("--paths", help="Print only the paths (their bytes as on disk), "
                                                            "one per line.")] = False,
    null: Annotated[bool, typer.Option("--null", "-0", help="With --paths: end each path with a NUL byte "
                                       "instead of a newline (for xargs -0; any name survives).")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a PNG contact sheet with the matched "
                                                               "boxes labelled by their words (given a folder: "
                                                               "FOLDER/sheet-QUERY.png); its folder must "
                                                               "exist.")] = None,
    per_word: Annotated[int | None, typer.Option("--per-word", help="First-stage regions per word "
                                                                    "(default: grows until proven).")] = None,
    shards: Annotated[str | None, typer.Option("--shards", help="Search a shard set instead of --index: "
                                                                "NAME (its NAME.shard-I-of-N indexes) or "
                                                                "NAME,NAME,...")] = None,
    use_ray: Annotated[bool, typer.Option("--ray", help="--shards: one Ray actor per shard (pip install -e "
                                                        "'.[ray]'); default: in this process.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster for --ray "
                                                                          "(implies it).")] = None,
    like: Annotated[str | None, typer.Option("--like", help="Find photos like this one: a photo of the index "
                                             "(its path or id) or any photo file; TEXT, if given, steers "
                                             "it.")] = None,
    minus: Annotated[list[str] | None, typer.Option("--minus", help="Photos matching these words fall: score = "
                                                    "S(TEXT) - weight x S(MINUS) (repeatable).")] = None,
    minus_weight: Annotated[float, typer.Option("--minus-weight", help="How much a --minus term "
                                                "counts.")] = MINUS_WEIGHT,
    min_score: Annotated[float | None, typer.Option("--min-score", help="Relevance floor: the least probability "
                                                    "(calibrated on Flickr8k dev) that a hit is right; 0 shows "
                                                    "every hit (default: the calibration's floor).")] = None,
    bridge: Annotated[bool, typer.Option("--bridge/--no-bridge", help="Also score words through the CNN's "
                                         "ImageNet classes (words outside the model's vocabulary count too; "
                                         "one index, not --shards).")] = True,
    after: AfterOpt = None, before: BeforeOpt = None, camera: CameraOpt = None, near: NearOpt = None,
    km: KmOpt = None,
) -> None:
    """Search photos with words (each hit shows the box every word matched), or photos like a photo
    (--like), or sentences for a photo (--image). Hits a query hardly matches fall under the relevance
    floor (--min-score)."""
    paths_out = paths_out or null
    where = MetaFilter.parse(after, before, camera, near, km)
    _check_options(text, k, json_out, paths_out, per_word, where, shards, image, like, minus)
    if sheet is not None:  # before the search: a path that cannot be written is known now
        from ..index.sheet import sheet_path

        sheet = sheet_path(sheet, text, image)
    if like is not None:
        target = _like_target(like)
        with ix.open_index(index, "photos") as x:
            loaded = srch.model_for(x, model)
            result, filtered = search_filtered(x, where, k, lambda n: ix.search_photo(x, loaded, target, n, text))
        _emit(result, json_out, paths_out, null, sheet, None, filtered=filtered)
        return
    floored = filtered = None
    if shards is not None:
        result, floored = _search_shards(shards, text, k, model, per_word, use_ray or ray_address is not None,
                                         ray_address, min_score)
    elif use_ray or ray_address:
        raise UsageError("--ray searches a shard set: give --shards NAME")
    elif text is not None:
        result, floored, filtered = _search_words(index, model, text, k, per_word, where, minus, minus_weight,
                                                  bridge, min_score)
    else:
        with ix.open_index(index, "sentences") as x:
            result = ix.search_photo(x, srch.model_for(x, model), image, k)  # type: ignore[arg-type]
    _emit(result, json_out, paths_out, null, sheet, image, floored, filtered)


def _search_words(index: str, model: str | None, text: str, k: int, per_word: int | None, where: MetaFilter,
                  minus: list[str] | None, minus_weight: float, bridge: bool,
                  min_score: float | None) -> tuple[srch.Result, Floored, FilterReport]:
    """Photos for words on one index: with --minus terms, the metadata filters and the relevance floor."""
    query_tokens_or_fail(text)
    with ix.open_index(index, "photos") as x:
        loaded = srch.text_model_for(x, model)

        def run(n: int) -> srch.Result:
            if minus:
                return ix.search_minus(x, loaded, text, minus, n, partial(ix.search_words, bridge=bridge),
                                       minus_weight)
            return ix.search_words(x, loaded, text, n, per_word, bridge=bridge)

        result, filtered = search_filtered(x, where, k, run)
        return result, apply_floor(result, load_calibration(loaded), min_score), filtered


def _search_shards(shards: str, text: str | None, k: int, model: str | None, per_word: int | None, use_ray: bool,
                   ray_address: str | None, min_score: float | None) -> tuple[srch.Result, Floored]:
    """Photos for words on a shard set (in this process, or one Ray actor per shard), floored with
    the set's calibration."""
    if text is None:
        raise UsageError("--shards searches photos with words; --image needs a sentence index")
    from ..cluster import shards as shard_set

    query_tokens_or_fail(text)
    result = shard_set.search_set(shards, text, k, model, per_word, use_ray, ray_address)
    with ix.open_index(shard_set.resolve_set(shards)[0], "photos") as x:  # the set's model: its calibration
        return result, apply_floor(result, load_calibration(srch.text_model_for(x, model)), min_score)


def _check_options(text: str | None, k: int, json_out: bool, paths_out: bool, per_word: int | None,
                   where: MetaFilter, shards: str | None, image: Path | None, like: str | None,
                   minus: list[str] | None) -> None:
    """The combinations of options that make no search, each refused in one line before any work."""
    if json_out and paths_out:
        raise UsageError("--json and --paths exclude each other")
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if per_word is not None and per_word <= 0:
        raise UsageError(f"--per-word must be at least 1 (got {per_word})")
    if where.active and (shards is not None or image is not None):
        raise UsageError("--after, --before, --camera and --near filter the photos of one index: not with "
                         + ("--shards" if shards is not None else "--image"))
    if like is not None and (image is not None or shards is not None or minus):
        raise UsageError("--like searches one photo index: not with --image, --shards or --minus")
    if like is None and (text is None) == (image is None):
        raise UsageError("give either a query TEXT, --like PHOTO or --image PHOTO")
    if minus and (text is None or shards is not None):
        raise UsageError("--minus takes a query TEXT on one index")


def _like_target(like: str) -> str | int:
    """--like 12 is photo 12 of the index unless a file of that name is here."""
    if like.isascii() and like.isdigit() and not Path(like).exists():
        return int(like)
    return like


def _emit(result: srch.Result, json_out: bool, paths_out: bool, null: bool, sheet: Path | None,
          image: Path | None, floored: Floored | None = None, filtered: FilterReport | None = None) -> None:
    if getattr(result, "dropped", None):
        err.print(f"(not words, dropped: {' '.join(printable(d) for d in result.dropped[:20])})", markup=False)
    if sheet is not None:
        from ..index.sheet import contact_sheet  # PIL: only for a sheet

        err.print(f"wrote {contact_sheet(result, sheet, photo=image)}", markup=False, highlight=False)
    if filtered is not None and filtered.filter.active:
        filter_notes(filtered.notes())
    if json_out:
        d = floored.to_dict() if floored is not None else result.to_dict()
        if filtered is not None and filtered.filter.active:
            d["filter"] = filtered.to_dict()
            for h in [*d["hits"], *d.get("below_floor", [])]:
                h.update(filtered.exif_of(h["path"]))
        print_json(d)
    elif paths_out:
        print_paths([h.key for h in result.hits], null)
    else:
        _print(result, floored)


def _print(result: srch.Result, floored: Floored | None = None) -> None:
    bridged = getattr(result, "bridged", None)
    if bridged is not None:  # an open-vocabulary result: its ignored words are unknown to GloVe too
        if result.ignored:
            out.print(f"(unknown to the model and to GloVe, not scored: {', '.join(result.ignored)})", markup=False)
        if bridged:
            out.print(f"(outside the model's vocabulary, scored through the CNN's classes: {', '.join(bridged)})",
                      markup=False)
        if getattr(result, "concepts_missing", 0):
            out.print(f"({result.concepts_missing} photos have no stored concepts: rebuild the index)", markup=False)
    elif result.ignored:
        out.print(f"(not in the vocabulary, ignored: {', '.join(result.ignored)})", markup=False)
    if getattr(result, "stand_ins", None):
        out.print("(inflected forms scored as their base word: "
                  f"{', '.join(f'{w} as {b}' for w, b in result.stand_ins.items())})", markup=False)
    if getattr(result, "reranked_by", None):
        out.print(f"(the top sentences re-ranked by the caption generator {result.reranked_by})", markup=False)
    if isinstance(result, ix.LikeResult):
        out.print(f"like {result.photo}" + (f" (photo {result.photo_id})" if result.photo_id is not None else "")
                  + (f", steered by {result.text!r}" if result.text else ""), markup=False)
    if floored is not None and not result.hits and floored.below:
        out.print(f"no photo matches {result.query.strip()!r} well (P(right) < {floored.floor:.3f}, the floor; "
                  "--min-score 0 shows every hit); the best few anyway:", markup=False)
        _print_hits(floored.below, floored, "  -")
        return
    if not result.hits:
        out.print("no results")
    _print_hits(result.hits, floored)


def _print_hits(hits: list[srch.Hit], floored: Floored | None, rank_mark: str | None = None) -> None:
    """One line per hit (rank, score, P(right) when calibrated, photo), then its boxes: each word's
    (a --minus word with a leading -), and a --like hit's best region pairs (query box -> its box)."""
    for rank, h in enumerate(hits, 1):
        p = floored.probability.get(id(h)) if floored is not None else None
        shown = f"{rank:>3}" if rank_mark is None else rank_mark
        out.print(f"{shown}  {h.score:8.4f}" + (f"  P={p:.2f}" if p is not None else "")
                  + f"  {h.text if h.text is not None else h.key}", markup=False)
        parts = [("-" if getattr(m, "negative", False) else "") + (f"{m.word} {m.box}" if m.box is not None
                                                                  else m.word) for m in h.words]
        parts += [f"{m.query_box}->{m.box}" for m in shown_pairs(getattr(h, "regions", []))]
        if parts:
            out.print("            " + "  ".join(parts), markup=False)
