"""The one place that chooses CPU or CUDA, and the thread policy of small queries; everything
else receives the result as an argument."""

from __future__ import annotations

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
