"""benchmarks/library.py in its smallest run: the index is written through the real writer and
searched, and the table has every row (the figures themselves are the benchmark's business)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_library_benchmark_smoke_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "library.py"), "--photos", "120",
                           "--queries", "3", "--cold", "2", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["photos", "disk", "build", "build peak memory", "search memory, private",
                     "search memory, mapped pages read", "warm query p50 / p95",
                     "cold query p50 / p95", "recall@10 vs exact", "recall@10 vs exhaustive", "rclip, for reference"]
    assert "120 (x 20 regions, 1,536-d" in rows[0]
    # Flat (too few photos for PQ codes): the two stages are the exhaustive scan itself.
    assert "| recall@10 vs exhaustive | 1.000 |" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the index was built in a temporary folder and removed
