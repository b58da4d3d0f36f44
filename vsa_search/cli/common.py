"""What every command shares: consoles, the error boundary, progress bars, JSON output."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

# typer vendors its own click; its exceptions are not the `click` package's.
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from ..core.errors import UsageError, VSAError
from ..core.names import display, fs_bytes, json_ready
from ..data.datasets import Dataset, load_dataset


class _Readable:
    """sys.stdout or sys.stderr as they are now (tests swap them), with every file name shown readably:
    a strict UTF-8 stream refuses a name that is not UTF-8 (core/names.py)."""

    def __init__(self, stream: str):
        self._stream = stream

    def _file(self) -> Any:
        f = getattr(sys, self._stream)
        return getattr(f, "rich_proxied_file", f)  # what rich does with a stream its progress bar redirects

    def write(self, text: str) -> int:
        return self._file().write(display(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        if name == "rich_proxied_file":  # rich would unwrap it past the display above
            raise AttributeError(name)
        return getattr(self._file(), name)


out = Console(file=_Readable("stdout"), highlight=False, soft_wrap=True)  # type: ignore[arg-type]
err = Console(file=_Readable("stderr"), stderr=True, highlight=False, soft_wrap=True)  # type: ignore[arg-type]


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


# typer checks every option through a pydantic TypeAdapter, and importing pydantic plus building the
# adapters costs more than the rest of a cold `vsa search` together (benchmarks/cold.py). The common
# cases (no value, a string for a str, digits for an int, a number inside an option's bounds, a list of
# photo paths) need no validation library; anything else (a bare Path, which typer checks on disk, a
# bad or out-of-range number) goes to typer's own adapter, so its messages stay.
_DIGITS = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")
_NOT_PLAIN = object()


def _plain_value(annotation: Any, value: Any) -> Any:
    """`value` as typer's adapter would give it, where that is plain; else _NOT_PLAIN."""
    if isinstance(value, str):
        if annotation is str:
            return value
        if annotation is int and _DIGITS.fullmatch(value):
            return int(value)
        if annotation is float and _DECIMAL.fullmatch(value):
            return float(value)
    if annotation in (int, bool, float) and type(value) is annotation:
        return value
    if annotation in (list[str], list[Path]) and (value is None or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))):
        # a list of paths is converted only (typer checks a bare Path on disk, not a list of them)
        return None if value is None else [Path(v) if annotation == list[Path] else v for v in value]
    return _NOT_PLAIN


def _fast_coercion() -> None:
    """Give every typer parameter the fast coercion above, before typer builds its own on first use."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer.core import _TyperParameter
    except ImportError:  # another typer: keep its own coercion
        return

    class Plain(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            got = _plain_value(self.annotation, value) if info.parser is None else _NOT_PLAIN
            number = isinstance(got, (int, float))
            if got is not _NOT_PLAIN and (not number or ((info.min is None or got >= info.min)
                                                         and (info.max is None or got <= info.max))):
                return got
            return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)

    typers_own = _TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        d = self.type_descriptor
        if self._runtime_param is None and not (d.is_file or d.is_choice or d.is_tuple):
            self._runtime_param = Plain(d.parameter_info, d.annotation)
        return typers_own(self)

    _TyperParameter.get_runtime_param = get_runtime_param


_fast_coercion()


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
    """JSON on stdout; a file name that is not UTF-8 as text plus its exact bytes (core/names.py)."""
    sys.stdout.write(json.dumps(json_ready(obj), indent=2, sort_keys=False) + "\n")


def print_paths(paths: list[str], null: bool = False) -> None:
    """File names as raw bytes on stdout, one per line or NUL-terminated (`null`, for xargs -0)."""
    end = b"\0" if null else b"\n"
    names = [fs_bytes(p) for p in paths]
    if not null:
        for p in paths:
            if "\n" in p:
                raise UsageError(f"{display(p)!r} holds a newline, so one name per line cannot show it: "
                                 "use --paths --null (-0) for NUL-separated names")
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(n + end for n in names))
    sys.stdout.buffer.flush()


def _bar(field: str) -> Any:
    """A rich Progress on stderr (off when stderr is no terminal) with the columns every bar here has;
    `field` names the task field shown after the count."""
    from rich.progress import (  # only commands that run long import it
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"{{task.fields[{field}]}}"), TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*cols, console=err, transient=False, disable=not err.is_terminal)


@contextmanager
def progress(description: str, total: int | None, unit: str = "photos") -> Iterator[Any]:
    """A rich progress bar on stderr (stdout stays clean for --json and pipes); yields advance(n)."""
    with _bar("rate") as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1, **fields: Any) -> None:
            bar.update(task, advance=n, **fields)
            t = bar.tasks[task]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} {unit}/s")

        yield advance


# The metadata filters of `vsa search` and `vsa dupes` (index/filters.py), declared once.
AfterOpt = Annotated[str | None, typer.Option("--after", help="Only photos taken on this day (EXIF, "
                                              "YYYY-MM-DD) or later.")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Only photos taken on this day (YYYY-MM-DD) "
                                               "or earlier.")]
CameraOpt = Annotated[str | None, typer.Option("--camera", help="Only photos whose camera (EXIF make and "
                                               "model) contains this text, in any case.")]
NearOpt = Annotated[str | None, typer.Option("--near", help="Only photos taken near LAT,LON (EXIF GPS, "
                                             "degrees), within --km.")]
KmOpt = Annotated[float | None, typer.Option("--km", help="With --near: the radius in km (default 10).")]


def filter_notes(notes: list[str]) -> None:
    """What a metadata filter could not judge, one line each on stderr (stdout stays clean)."""
    for line in notes:
        err.print(f"({line})", markup=False)


@contextmanager
def stages() -> Iterator[Any]:
    """Progress of a command that runs in stages, on stderr: yields on_stage(description, total,
    unit) -> advance(n). On a terminal each stage gets its own bar with its real total; otherwise
    (a pipe, a log file) one line per stage as it starts, with the time since the command began."""
    import time

    t0 = time.perf_counter()
    with _bar("unit") as bar:

        def on_stage(description: str, total: int, unit: str = "") -> Any:
            if not err.is_terminal:
                err.print(f"[{time.perf_counter() - t0:6.1f} s] {description} ({total:,} {unit})".rstrip(),
                          markup=False, highlight=False)
            task = bar.add_task(description, total=total, unit=unit)
            return lambda n=1: bar.update(task, advance=n)

        yield on_stage
