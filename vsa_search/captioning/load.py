"""The models `vsa caption` describes photos with. On the CPU they are the numpy ones (the CNN of
vision/cnn.py, the generator and beam search of models/decode_np.py, the re-ranker of
models/rerank_np.py): a new process then imports neither torch nor timm, which took longer than
the captioning itself. On CUDA, for --concepts (the constrained beam search is torch's) and for
region configs the numpy CNN does not run, they are the torch models. A re-ranker of a fine-tuned CNN
top's features brings its top into the region encoder (rerank.feature_source)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.device import on_cpu, pick_device
from ..models import decode_np
from ..vision.cnn import NumpyRegionEncoder, runs_in_numpy
from .rerank import feature_source, load_reranker


def load_captioning(model: Path, rerank: str | None = None, device: str | None = None,
                    concepts: bool = False) -> tuple[Any, Any, Any]:
    """(caption generator, re-ranker or None, region encoder) for captioning.caption_photos:
    numpy ones on the CPU, torch ones otherwise (see the module's note). `rerank` as in
    rerank.load_reranker; concepts=True: no re-ranker (the constrained beam's caption is kept)."""
    if on_cpu(device) and not concepts:
        loaded = decode_np.load_caption(model)
        if runs_in_numpy(loaded.region_config):
            align = load_reranker(rerank, loaded, numpy=True)
            cfg, top = feature_source(loaded, align)
            return loaded, align, NumpyRegionEncoder(cfg, top=top)
    from ..models.captioner import load_caption
    from ..vision.regions import RegionEncoder

    dev = pick_device(device)
    loaded = load_caption(model, device=dev)
    align = None if concepts else load_reranker(rerank, loaded, dev)
    cfg, top = feature_source(loaded, align)
    return loaded, align, RegionEncoder(cfg, dev, top=top)
