"""The `vsa` command: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer._click import Context  # typer vendors its own click
from typer.core import TyperCommand

from .. import __version__
from .common import VSAGroup, out

# name -> (module under vsa_search.cli, its Typer app or command function, one-line help). A command's
# module is imported only when that command runs: the modules pull in torch, timm and faiss (seconds),
# and `vsa --help`, `vsa --version` or a usage error need none of them.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "features": ("features", "app", "Region boxes and CNN features of a data set's photos, stored in LMDB."),
    "train": ("train", "app", "Train, combine and normalise the alignment and caption models."),
    "eval": ("eval", "app", "Measure models the paper's way, beside baselines and the published figures."),
    "caption": ("caption", "caption_cmd", "Describe each photo in one sentence, with its log-probability."),
    "align": ("align", "app", 'Align a sentence\'s fragments to a photo\'s regions: vsa align PHOTO "SENTENCE".'),
    "index": ("index", "app", "Index folders of photos for search (and sentences for photo -> text)."),
    "search": ("search", "search_cmd", "Search photos with words; each hit shows the box every word matched."),
    "dupes": ("dupes", "dupes_cmd", "Groups of near-duplicate photos, each with the one to keep; never deletes."),
    "info": ("info", "info_cmd", "The version, where things live, the shipped models, CUDA and faiss-gpu."),
    "serve": ("serve", "serve_cmd", "Search, caption and align in a browser: models and an index loaded once."),
}


def load_command(name: str) -> Any:
    """The click command of `vsa NAME`, importing its module."""
    module, attr, _ = COMMANDS[name]
    obj = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    if not isinstance(obj, typer.Typer):
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")
        single.command(name)(obj)
        obj = single
    cmd = typer.main.get_command(obj)
    cmd.name = name
    return cmd


class LazyGroup(VSAGroup):
    """Lists every command from COMMANDS (for --help) and loads one only to run it."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: Context, name: str) -> Any:
        if name in COMMANDS:  # a stand-in that only knows its help line
            return TyperCommand(name, help=COMMANDS[name][2], short_help=COMMANDS[name][2])
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (name, load_command(name), rest) if name in COMMANDS else (name, cmd, rest)


app = typer.Typer(cls=LazyGroup, help="Search, caption and align your photos with words (Karpathy & Fei-Fei, "
                                      "CVPR 2015).", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown", pretty_exceptions_enable=False)


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
