"""`vsa train embed|caption`."""

from __future__ import annotations

from .common import new_app

app = new_app("Train the alignment model (embed) or the caption generator (caption).")
