"""`vsa eval recall|caption`."""

from __future__ import annotations

from .common import new_app

app = new_app("Measure models the paper's way, beside baselines and the published figures.")
