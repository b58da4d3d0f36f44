"""The `vsa` command: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import align, caption, eval, features, index, info, search, serve, train
from .common import new_app, out

app = new_app("Search, caption and align your photos with words (Karpathy & Fei-Fei, CVPR 2015).")
app.add_typer(features.app, name="features")
app.add_typer(train.app, name="train")
app.add_typer(eval.app, name="eval")
app.command("caption")(caption.caption_cmd)
app.add_typer(align.app, name="align")
app.add_typer(index.app, name="index")
app.command("search")(search.search_cmd)
app.command("info")(info.info_cmd)
app.command("serve")(serve.serve_cmd)


def _print_version(value: bool) -> None:
    if value:
        out.print(__version__)
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    pass


@app.command("version")
def version() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    app()
