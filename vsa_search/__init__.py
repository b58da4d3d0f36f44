"""vsa-search: Deep Visual-Semantic Alignments (Karpathy & Fei-Fei, CVPR 2015) for your photos."""

__version__ = "0.1.0"
