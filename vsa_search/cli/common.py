"""What every command shares: consoles, the error boundary, progress bars, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from ..errors import VSAError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class VSAGroup(TyperGroup):
    """The error boundary: a VSAError anywhere below becomes one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VSAError as e:
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


def new_app(help: str) -> typer.Typer:
    return typer.Typer(cls=VSAGroup, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def progress(description: str, total: int | None, unit: str = "photos") -> Iterator[Any]:
    """A rich progress bar on stderr (stdout stays clean for --json and pipes); yields advance(n)."""
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1, **fields: Any) -> None:
            bar.update(task, advance=n, **fields)
            t = bar.tasks[task]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} {unit}/s")

        yield advance
