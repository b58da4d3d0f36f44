"""What every command shares: consoles, the error boundary, progress bars, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# typer vendors its own click; its exceptions are not the `click` package's.
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from ..core.errors import VSAError
from ..data.datasets import Dataset, load_dataset

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class VSAGroup(TyperGroup):
    """The error boundary: a VSAError anywhere below becomes one line on stderr and its exit code,
    and so does a bad option or argument (click would print a multi-line usage box)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exc.NoArgsIsHelpError as e:  # bare `vsa GROUP`: show its help, as click does
            e.show()
            sys.exit(e.exit_code)
        except click_exc.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            err.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False)
            sys.exit(e.exit_code)
        except click_exc.ClickException as e:
            err.print(f"error: {e.format_message()}", markup=False, highlight=False)
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("aborted")
            sys.exit(1)
        # Without standalone mode click returns the exit code of a typer.Exit, or the command's value.
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except VSAError as e:
            # escape: a message may hold brackets (paths, "pip install -e '.[ray]'") that are not markup
            err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as e:  # a file the library did not expect to fail on: still one line, no traceback
            where = f"{e.filename}: " if e.filename else ""
            err.print("[bold red]error:[/] " + escape(f"{where}{e.strerror or e}"), markup=True, highlight=False)
            raise typer.Exit(1) from None


DatasetOpt = Annotated[str, typer.Option(help="flickr8k | coco | karpathy")]
RootOpt = Annotated[Path | None, typer.Option(help="Data set root: Flickr8k's folder (default: the shared copy), "
                                                   "or the images folder for coco/karpathy.")]
CaptionsOpt = Annotated[Path | None, typer.Option(help="Captions JSON for coco/karpathy.")]


def load_dataset_opts(dataset: str, root: Path | None, captions: Path | None) -> Dataset | None:
    """The data set named by the --dataset/--root/--captions options; None for the defaults (the shared
    Flickr8k), which the library loads itself once the other options are checked."""
    if (dataset, root, captions) == ("flickr8k", None, None):
        return None
    kw = {}
    if captions is not None:
        kw["captions_json" if dataset == "coco" else "dataset_json"] = captions
    return load_dataset(dataset, root, **kw)


def new_app(help: str) -> typer.Typer:
    # markdown mode reflows docstrings (rich mode keeps their hard line breaks mid-sentence).
    return typer.Typer(cls=VSAGroup, help=help, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
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


@contextmanager
def stages() -> Iterator[Any]:
    """Progress of a command that runs in stages, on stderr: yields on_stage(description, total,
    unit) -> advance(n). On a terminal each stage gets its own bar with its real total; otherwise
    (a pipe, a log file) one line per stage as it starts, with the time since the command began."""
    import time

    t0 = time.perf_counter()
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=err, transient=False, disable=not err.is_terminal) as bar:

        def on_stage(description: str, total: int, unit: str = "") -> Any:
            if not err.is_terminal:
                err.print(f"[{time.perf_counter() - t0:6.1f} s] {description} ({total:,} {unit})".rstrip(),
                          markup=False, highlight=False)
            task = bar.add_task(description, total=total, unit=unit)
            return lambda n=1: bar.update(task, advance=n)

        yield on_stage
