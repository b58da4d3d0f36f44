"""The open-vocabulary search's cache of an index's region concepts is shared by the server's worker
threads: a request for a new generation (an index rebuilt under the running server) must not empty it
under a request that is still reading the old one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vsa_search.index import openvocab


class FakeIndex:
    """What index_concepts reads: a generation directory, its items' regions, no stored concepts."""

    def __init__(self, gen: str, photos: int):
        self.dir = Path(gen)
        self.first = np.arange(photos, dtype=np.int64)
        self.count = np.ones(photos, np.int64)
        self.fragments = photos

    def __len__(self) -> int:
        return len(self.first)

    def concepts_bytes(self, items: Any) -> list[bytes | None]:
        return [None for _ in items]


class OtherRequestAfterStore(dict):
    """The cache, with the interleaving the thread pool can produce made certain: right after the first
    store into it, another request runs in its own thread (given half a second: with a lock it waits)."""

    def __init__(self, other: Callable[[], None]):
        super().__init__()
        self.other: Callable[[], None] | None = other
        self.thread: threading.Thread | None = None

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if self.other is not None:
            other, self.other = self.other, None
            self.thread = threading.Thread(target=other)
            self.thread.start()
            self.thread.join(timeout=0.5)


def test_a_request_for_a_new_generation_does_not_empty_the_cache_under_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = FakeIndex("/idx/.lib.g000001", 3), FakeIndex("/idx/.lib.g000002", 5)
    got: dict[str, Any] = {}

    def other_request() -> None:
        got["new"] = openvocab.index_concepts(new)

    cache = OtherRequestAfterStore(other_request)
    monkeypatch.setattr(openvocab, "_CACHE", cache)
    got["old"] = openvocab.index_concepts(old)  # before the lock: KeyError, the other request cleared the cache
    assert cache.thread is not None
    cache.thread.join(timeout=10)  # the other request finishes once this one has left the cache
    assert got["old"][0].shape == (3, 1) and got["old"][2].all()
    assert got["new"][0].shape == (5, 1) and got["new"][2].all()
    assert openvocab.index_concepts(new) is got["new"]  # the newest generation stays cached
