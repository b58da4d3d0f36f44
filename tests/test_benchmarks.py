"""The benchmarks still run: each one's main function on tiny arguments, checking the table it
prints has the rows it promises (never its timings, which belong to the benchmark's own run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_benchmark_measures_every_type_and_cleans_up(tmp_path: Path) -> None:
    bench = _load("search")
    rows = bench.main(["--sizes", "1000", "--queries", "3", "--dim", "16", "--workdir", str(tmp_path)])
    assert [(r["regions"], r["type"]) for r in rows] == [(1000, t) for t in ("exhaustive", "flat", "ivf", "hnsw")]
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)
    assert list(tmp_path.iterdir()) == []  # its indexes were removed


def test_search_benchmark_json_renders_as_the_results_page_table(tmp_path: Path) -> None:
    """`--json` writes what benchmarks/results.py reads for docs/RESULTS.md: the page's table has the
    run's rows."""
    import json

    _load("search").main(["--sizes", "1000", "--queries", "3", "--dim", "16", "--workdir", str(tmp_path),
                          "--json", str(tmp_path / "search.json")])
    page = _load("results").search_speed(json.loads((tmp_path / "search.json").read_text()))
    rows = [line for line in page.splitlines() if line.startswith("| 1k |")]
    assert [r.split(" | ")[1] for r in rows] == ["exhaustive (baseline)", "flat (auto)", "ivf", "hnsw"]
    assert "--queries 3 --json" in page


@pytest.mark.slow
def test_footprint_benchmark_builds_from_cached_features(tmp_path: Path) -> None:
    """benchmarks/footprint.py answers the build's CNN step from the feature cache; the build also
    reads each photo's metadata from that step's decode, so the cached step must hand one over."""
    import json
    import os
    import subprocess
    import sys

    from vsa_search.core import paths
    from vsa_search.models.alignment import load_align

    # The shipped model's own store (its extractor names its fine-tuned CNN top): what footprint.py reads.
    cfg = load_align(paths.find_model("align")).region_config
    stores = [paths.cache_dir() / "features" / c.extractor_id() for c in {cfg, cfg.imagenet()}]
    if not (paths.flickr8k_root().is_dir() and all(s.is_dir() for s in stores)):
        pytest.skip(f"needs Flickr8k and its feature caches at {stores}")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "footprint.py"), "--split", "test", "--photos", "12",
                           "--queries", "5", "--json"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["photos"] == 12 and report["disk"]["meta.lmdb/data.mdb"] > 0
    assert 0.0 <= report["recall@10 vs exact (float32)"] <= 1.0
    page = _load("results").footprint(report)
    assert "(12 Flickr8k test photos)" in page and "| **all files** |" in page


def test_the_dense_top_computes_the_strided_one_at_every_second_position() -> None:
    """benchmarks/region_ablation.py's stride-16 top: on a real photo's map, its 14 x 14 output at the odd
    positions is the 7 x 7 output (TF's "same" padding of a stride-2 convolution samples those), up to the
    borders' padding; the weights are the same."""
    import copy

    import torch
    from PIL import Image

    from vsa_search.core.config import MapConfig
    from vsa_search.vision.trunk import CNNTop, MapLower

    cfg = MapConfig(cut=5)
    low, top = MapLower(cfg), CNNTop(cfg).eval()
    dense = _load("region_ablation").dense(copy.deepcopy(top))
    x = low(low.tensor(Image.open(BENCHMARKS.parent / "examples" / "photos" / "horse.jpg")).unsqueeze(0))
    with torch.no_grad():
        coarse, fine = top(x), dense(x)
    assert coarse.shape[-2:] == (7, 7) and fine.shape[-2:] == (14, 14)
    cos = torch.nn.functional.cosine_similarity(coarse, fine[..., 1::2, 1::2], dim=1)
    assert cos.mean() > 0.95 and cos[0, 1:6, 1:6].min() > 0.999  # the interior, away from the padding
    shifted = torch.nn.functional.cosine_similarity(coarse, fine[..., 0::2, 0::2], dim=1)
    assert shifted.mean() < 0.9  # the other positions are not the same samples
    assert all(torch.equal(a, b) for a, b in zip(top.state_dict().values(), dense.state_dict().values()))
