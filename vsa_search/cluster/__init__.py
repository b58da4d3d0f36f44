"""Past one machine on Ray (the optional `ray` extra): index builds whose shards are encoded by a
pool of Ray actors holding the CNN and the alignment model (`build.py`), and search fanned out
over a set of shard indexes (`shards.py`).

Ray is imported lazily, only by the functions that need it: without the extra everything else
works as before, and asking for Ray says how to install it in one line.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..core.errors import SearchIndexError, UsageError, VSAError

INSTALL_HINT = "pip install -e '.[ray]'"
START_TRIES = 5


def require_ray() -> Any:
    """The `ray` module, or a one-line UsageError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"Ray is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised: the running session if there is one, else a connection to `address`
    ("auto", "HOST:PORT", "ray://HOST:10001"), else $RAY_ADDRESS, else a new local cluster.
    Only a session started here is shut down on exit."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    # Ray's start-up notices and its C++ workers' log lines would bury the one-line errors and the
    # progress bar on stderr; failures still arrive here as exceptions. Set the variable to see them.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kw["num_cpus"] = num_cpus
    for attempt in range(START_TRIES):
        before = _descendants()
        try:
            ray.init(address=address, **kw)
            break
        except ConnectionError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address}: {e}") from None
        except Exception as e:
            # Ray gives its local processes a fixed 30 s to register; on a saturated machine they
            # can miss it once and make it on a second start. A failed start leaves its processes
            # running (ray.shutdown does not know them): end the ones it started.
            ray.shutdown()
            for pid in _descendants() - before:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if "timed out during startup" not in str(e) or attempt == START_TRIES - 1:
                raise SearchIndexError(f"Ray did not start: {str(e).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _descendants() -> set[int]:
    """Ids of this process's descendants (from /proc; empty where there is none)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            with suppress(OSError, IndexError, ValueError), open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])  # field 4: the parent's id
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(kids)
        todo += kids
    return found


def root_cause(e: BaseException) -> BaseException:
    """The error a Ray task raised, out of the wrappers Ray (and Ray Data) put around it."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            e = cause
        elif e.__cause__ is not None:
            e = e.__cause__
        else:
            break
    return e


def task_error(e: BaseException) -> Exception:
    """What a failed Ray task should raise here: the VSAError it raised (one line for the CLI),
    or any other failure as one SearchIndexError line."""
    root = root_cause(e)
    if isinstance(root, VSAError):
        if root.args and isinstance(root.args[0], str):  # Ray Data appends lines of retry advice to it
            root.args = (root.args[0].splitlines()[0],) + root.args[1:]
        return root
    text = str(root).strip()
    return SearchIndexError(f"a Ray worker failed: {type(root).__name__}: {text.splitlines()[0] if text else ''}")
