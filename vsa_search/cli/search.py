"""`vsa search "TEXT"` (photos for words) and `vsa search --image PHOTO` (sentences for a photo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import index as ix
from ..core.errors import UsageError
from ..index import query as srch
from ..models.querytext import printable, query_tokens_or_fail
from .common import err, out, print_json


def search_cmd(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many results.")] = 10,
    index: Annotated[str, typer.Option("--index", help="Index name (or path).")] = ix.DEFAULT_NAME,
    image: Annotated[Path | None, typer.Option("--image", help="Find sentences for this photo instead "
                                                               "(needs `vsa index text`).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Alignment model (default: the index's).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    paths_out: Annotated[bool, typer.Option("--paths", help="Print only the paths, one per line.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a PNG contact sheet with the matched "
                                                               "boxes labelled by their words.")] = None,
    per_word: Annotated[int | None, typer.Option("--per-word", help="First-stage regions per word "
                                                                    "(default: grows until proven).")] = None,
    shards: Annotated[str | None, typer.Option("--shards", help="Search a shard set instead of --index: "
                                                                "NAME (its NAME.shard-I-of-N indexes) or "
                                                                "NAME,NAME,...")] = None,
    use_ray: Annotated[bool, typer.Option("--ray", help="--shards: one Ray actor per shard (pip install -e "
                                                        "'.[ray]'); default: in this process.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster for --ray "
                                                                          "(implies it).")] = None,
    bridge: Annotated[bool, typer.Option("--bridge/--no-bridge", help="Also score words through the CNN's "
                                         "ImageNet classes (words outside the model's vocabulary count too; "
                                         "one index, not --shards).")] = True,
) -> None:
    """Search photos with words; each hit shows the box every word matched."""
    if (text is None) == (image is None):
        raise UsageError("give either a query TEXT or --image PHOTO")
    if json_out and paths_out:
        raise UsageError("--json and --paths exclude each other")
    if k <= 0:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if per_word is not None and per_word <= 0:
        raise UsageError(f"--per-word must be at least 1 (got {per_word})")
    if shards is not None:
        if text is None:
            raise UsageError("--shards searches photos with words; --image needs a sentence index")
        from ..cluster import shards as shard_set

        query_tokens_or_fail(text)
        result = shard_set.search_set(shards, text, k, model, per_word, use_ray or ray_address is not None,
                                      ray_address)
    elif use_ray or ray_address:
        raise UsageError("--ray searches a shard set: give --shards NAME")
    elif text is not None:
        query_tokens_or_fail(text)
        with ix.open_index(index, "photos") as x:
            result = ix.search_words(x, srch.text_model_for(x, model), text, k, per_word, bridge=bridge)
    else:
        with ix.open_index(index, "sentences") as x:
            loaded = srch.model_for(x, model)
            result = srch.search_image(x, loaded, image, k)  # type: ignore[arg-type]
    if getattr(result, "dropped", None):
        err.print(f"(not words, dropped: {' '.join(printable(d) for d in result.dropped[:20])})", markup=False)
    if sheet is not None:
        from ..index.sheet import contact_sheet  # PIL: only for a sheet

        contact_sheet(result, sheet, photo=image)
    if json_out:
        print_json(result.to_dict())
    elif paths_out:
        for h in result.hits:
            out.print(h.key, markup=False)
    else:
        _print(result)


def _print(result: srch.Result) -> None:
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
    if not result.hits:
        out.print("no results")
    for rank, h in enumerate(result.hits, 1):
        out.print(f"{rank:>3}  {h.score:8.4f}  {h.text if h.text is not None else h.key}", markup=False)
        parts = [f"{m.word} {m.box}" if m.box is not None else m.word for m in h.words]
        out.print("            " + "  ".join(parts), markup=False)
