"""Evaluation the way the paper measures: retrieval Recall@K and median rank, and caption
metrics (BLEU-1..4, METEOR, CIDEr), each beside baselines and the paper's published figures."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def paper_results() -> dict[str, Any]:
    """The paper's published figures, shipped inside the package."""
    return json.loads(resources.files("vsa_search").joinpath("data/paper_results.json").read_text())


# --------------------------------------------------------------------------- retrieval (recall)


# --------------------------------------------------------------------------- captions
