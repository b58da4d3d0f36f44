"""`vsa info`: the version, where indexes, models and caches live, the shipped models, and the
accelerators this installation can use."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..core import paths
from ..core.errors import ModelError
from ..models import checkpoint
from ..models.alignment import weights_fingerprint
from .common import out, print_json

METRICS_SHOWN = 8  # the text view stays short; --json carries every metric


def info_cmd(json_out: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False) -> None:
    """The version, where things live, the shipped models (fingerprints, metrics), CUDA and faiss-gpu."""
    report = {
        "version": __version__,
        "python": platform.python_version(),
        "package": str(Path(__file__).resolve().parent.parent),
        "install": "checkout" if paths.in_checkout() else "installed",
        "locations": {
            "data_home": {"path": str(paths.home()), "source": paths.home_source()},
            "indexes": str(paths.indexes_dir()),
            "user_models": str(paths.models_dir()),
            "cache": str(paths.cache_dir()),
            "shipped_models": str(paths.shipped_models_dir()),
        },
        "shipped_models": [_model(p) for p in paths.shipped_models()],
        "cuda": _cuda(),
        "faiss": _faiss(),
    }
    if json_out:
        print_json(report)
    else:
        _print(report)


def _model(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": path.stem, "path": str(path), "bytes": path.stat().st_size}
    card = path.with_suffix(".md")
    entry["card"] = str(card) if card.is_file() else None
    try:
        ck = checkpoint.load(path)
    except ModelError as e:  # one bad file must not hide the others
        return {**entry, "error": str(e)}
    # The same fingerprint an index records for the model it was built with.
    return {**entry, "kind": ck.kind, "format_version": ck.format_version,
            "fingerprint": weights_fingerprint(ck.state_dict), "epoch": ck.train_state.get("epoch"),
            "metrics": ck.metrics}


def _cuda() -> dict[str, Any]:
    import torch

    ok = torch.cuda.is_available()
    return {"available": ok, "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else []}


def _faiss() -> dict[str, Any]:
    import faiss

    gpus = getattr(faiss, "get_num_gpus", lambda: 0)()
    return {"version": getattr(faiss, "__version__", None), "gpu_build": hasattr(faiss, "StandardGpuResources"),
            "gpus": gpus, "gpu_usable": gpus > 0}


def _flat_metrics(m: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves as dotted keys; a path used as a key (an ensemble's parts) becomes its file stem."""
    if isinstance(m, dict):
        return [kv for k, v in m.items()
                for kv in _flat_metrics(v, f"{prefix}{Path(k).stem if '/' in str(k) else k}.")]
    if isinstance(m, (int, float)) and not isinstance(m, bool):
        return [(prefix.rstrip("."), m)]
    return []


def _print(r: dict[str, Any]) -> None:
    out.print(f"vsa-search {r['version']} ({r['install']}: {r['package']}; Python {r['python']})", markup=False)
    loc = r["locations"]
    rows = [("data home", f"{loc['data_home']['path']}  ({loc['data_home']['source']})"),
            ("indexes", loc["indexes"]), ("user models", loc["user_models"]), ("cache", loc["cache"]),
            ("shipped models", loc["shipped_models"])]
    for name, where in rows:
        out.print(f"{name:<15} {where}", markup=False)
    out.print("shipped models:" if r["shipped_models"] else "shipped models: none found")
    for m in r["shipped_models"]:
        size = f"{m['bytes'] / 1e6:.1f} MB"
        if "error" in m:
            out.print(f"  {m['name']:<16} {size:>8}  unreadable: {m['error']}", markup=False)
            continue
        epoch = f"  epoch {m['epoch']}" if m["epoch"] is not None else ""
        out.print(f"  {m['name']:<16} {m['kind']:<8} {m['fingerprint']}  {size:>8}{epoch}", markup=False)
        flat = _flat_metrics(m["metrics"])
        shown = ", ".join(f"{k} {v if isinstance(v, int) else round(v, 2)}" for k, v in flat[:METRICS_SHOWN])
        more = f", ... ({len(flat) - METRICS_SHOWN} more with --json)" if len(flat) > METRICS_SHOWN else ""
        out.print(f"      {shown or 'no metrics recorded'}{more}", markup=False)
    c, f = r["cuda"], r["faiss"]
    cuda = f"yes: {', '.join(c['devices'])}" if c["available"] else "not available"
    out.print(f"CUDA            {cuda} (torch {c['torch']}, CUDA build {c['cuda_build'] or 'none'})", markup=False)
    fg = (f"yes: {f['gpus']} GPU(s)" if f["gpu_usable"] else
          "installed, no GPU visible" if f["gpu_build"] else "not installed (pip install 'vsa-search[gpu]')")
    out.print(f"faiss-gpu       {fg} (faiss {f['version']})", markup=False)
