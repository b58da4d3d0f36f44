"""`vsa train ensemble|caption-ensemble`: trained models put together into one model file. The parts'
own dev figures do not describe the whole, so they are kept apart in its metrics, under their file names."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.errors import UsageError
from ..models.alignment import ensemble_align, ensemble_parts, load_align, save_align
from ..models.captioner import ensemble_captioners, load_caption, save_caption


def _parts(models: list[Any]) -> dict[str, Any]:
    return {str(m.path): m.metrics for m in models}


def write_align_ensemble(base: str | Path, members: list[str | Path], out: str | Path, flip: bool = False,
                         extra_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """A hybrid alignment model plus global baselines scoring S = S_base + Σ S_member, written to `out`;
    flip, extra_sizes: it reads photos with test-time flips and at these input sizes too (RegionConfig)."""
    loaded = load_align(paths.find_model(str(base)))
    parts = [load_align(paths.find_model(str(m))) for m in members]
    model = ensemble_align(loaded, parts)
    metrics = {"ensemble": {"base": str(base), "members": [str(m) for m in members]},
               "parts": _parts([loaded, *parts])}
    region_cfg = loaded.region_config
    if flip or extra_sizes:
        region_cfg = dataclasses.replace(region_cfg, flip=flip or region_cfg.flip,
                                         extra_sizes=tuple(sorted(set(extra_sizes))) or region_cfg.extra_sizes)
    save_align(model, loaded.vocab, region_cfg, out, metrics=metrics, top=loaded.top)  # members share the top
    return {"model": str(out), "global_members": model.cfg.global_members, "out_dim": model.out_dim,
            "flip": region_cfg.flip, "extra_sizes": list(region_cfg.extra_sizes)}


def write_align_part(model: str | Path, part: int, out: str | Path) -> dict[str, Any]:
    """One part of an alignment ensemble as a model of its own, written to `out` (float16, its CNN top, no
    querybank): part 0 is the hybrid model, part k the k-th extra global model (e.g. the global baseline
    that `vsa eval recall` compares with, on the same features)."""
    loaded = load_align(paths.find_model(str(model)))
    parts = ensemble_parts(loaded)
    if not 0 <= part < len(parts):
        raise UsageError(f"{loaded.path}: has parts 0 (the hybrid model) to {len(parts) - 1}, not {part}")
    metrics = {"part_of": str(loaded.path), "part": part, "parts": _parts([loaded])}
    save_align(parts[part], loaded.vocab, loaded.region_config, out, metrics=metrics, half=True, top=loaded.top)
    return {"model": str(out), "from": str(loaded.path), "part": part, "arch": parts[part].cfg.arch}


def write_caption_ensemble(members: list[str | Path], out: str | Path, rerank_weight: float | None = None,
                           length_norm: float | None = None) -> dict[str, Any]:
    """Caption generators decoding together (mean of their word distributions), written to `out` as
    float16; `rerank_weight` and `length_norm` are the re-ranking weight and length normalisation the file
    asks for (captioning/rerank.py)."""
    parts = [load_caption(paths.find_model(str(m))) for m in members]
    model = ensemble_captioners(parts)
    asks = {k: v for k, v in {"rerank_weight": rerank_weight, "length_norm": length_norm}.items() if v is not None}
    metrics = {"ensemble": [str(m.path) for m in parts], "parts": _parts(parts), **asks}
    save_caption(model, parts[0].vocab, parts[0].region_config, out, metrics=metrics, half=True)
    return {"model": str(out), "members": len(parts), "rerank_weight": rerank_weight,
            **({"length_norm": length_norm} if length_norm is not None else {})}
