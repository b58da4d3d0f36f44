"""The one place that chooses CPU or CUDA, and the thread policy of small queries; everything
else receives the result as an argument. torch is imported only by the calls that need it: a text
search runs on numpy alone."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when present, else CPU. A device that is no device, or CUDA where
    there is none, is a UsageError (not torch's traceback at the first tensor moved there)."""
    import torch

    if device:
        try:
            d = torch.device(device)
        except RuntimeError:
            raise UsageError(f"--device {device}: not a device (cpu, cuda or cuda:N)") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
        return d
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Where Linux shows a GPU driver: without any of them torch can see no CUDA (or ROCm) device.
_GPU_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def on_cpu(device: str | None = None) -> bool:
    """Whether pick_device(device) is the CPU, answered without importing torch (seconds of a
    short command's start) where the answer is plain: `device` given, or Linux with no GPU driver."""
    if device:
        return str(device).split(":")[0] == "cpu"
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_NODES):
        return True
    return pick_device(device).type == "cpu"


@functools.lru_cache(maxsize=1)
def _blas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of the thread count of the OpenBLAS numpy is linked with (found in the process's
    memory map, as threadpoolctl does); None where there is none to find."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                set_.argtypes = [ctypes.c_int]
                return get, set_
    return None


@contextmanager
def one_thread() -> Iterator[None]:
    """Queries are many small products: one thread is faster than a team, and on a shared
    2-core machine far faster (2 threads were 2-8x slower: they spin waiting for each other).
    Applies to numpy's BLAS and, when it is loaded, to torch."""
    torch: Any = sys.modules.get("torch")
    blas = _blas_threads() if "numpy" in sys.modules else None
    prev_torch = torch.get_num_threads() if torch is not None else None
    prev_blas = blas[0]() if blas else None
    if torch is not None:
        torch.set_num_threads(1)
    if blas:
        blas[1](1)
    try:
        yield
    finally:
        if torch is not None and prev_torch is not None:
            torch.set_num_threads(prev_torch)
        if blas and prev_blas is not None:
            blas[1](prev_blas)


def pipeline_threads(device: torch.device) -> tuple[int, int]:
    """(torch threads, decode workers) for extraction, where worker threads decode photos and run
    selective search while torch runs the CNN. On the CPU torch gets a third of the cores (never
    more than it is allowed: OMP_NUM_THREADS) and the workers the rest plus one, so the cores stay
    busy without torch's thread team spinning against the workers; on a GPU the workers get them all."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    if device.type != "cpu":
        return torch.get_num_threads(), cores
    threads = max(1, min(torch.get_num_threads(), cores // 3))
    return threads, max(1, cores - threads + 1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads, then restore the previous setting."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
