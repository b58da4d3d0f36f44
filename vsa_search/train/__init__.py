"""Training: the alignment model (embed), the caption generator (caption), the global baseline
(baseline), models put together (ensemble) or given a querybank (querybank), and multi-GPU helpers
(distributed). The layer just below the CLI."""

from .caption import train_caption
from .embed import train_embed

__all__ = ["train_caption", "train_embed"]
