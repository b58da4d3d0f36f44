"""The one place that chooses CPU or CUDA, and the thread policy of small queries; everything
else receives the result as an argument."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def one_thread() -> Iterator[None]:
    """Queries are many small products: one thread is faster than a team, and on a shared
    2-core machine far faster (2 threads were 2-8x slower: they spin waiting for each other)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def pipeline_threads(device: torch.device) -> tuple[int, int]:
    """(torch threads, decode workers) for extraction, where worker threads decode photos and run
    selective search while torch runs the CNN. On the CPU torch gets a third of the cores (never
    more than it is allowed: OMP_NUM_THREADS) and the workers the rest plus one, so the cores stay
    busy without torch's thread team spinning against the workers; on a GPU the workers get them all."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    if device.type != "cpu":
        return torch.get_num_threads(), cores
    threads = max(1, min(torch.get_num_threads(), cores // 3))
    return threads, max(1, cores - threads + 1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads, then restore the previous setting."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
