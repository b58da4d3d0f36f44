"""`vsa serve`: the models and an index loaded once in one process, a JSON API that answers as the
CLI's `--json` does, and a page (served from this package, no network needed) to search, caption and
align photos in a browser."""

from __future__ import annotations

from .app import create_app
from .engine import Engine

__all__ = ["Engine", "create_app"]
