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


def test_search_benchmark_prints_the_readme_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("search")
    rows = bench.main(["--sizes", "1000", "--queries", "3", "--dim", "16", "--workdir", str(tmp_path)])
    assert [(r["regions"], r["type"]) for r in rows] == [(1000, t) for t in ("exhaustive", "flat", "ivf", "hnsw")]
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows)
    table = capsys.readouterr().out.split("| regions |", 1)[1].splitlines()[2:]
    assert [line.split(" | ")[1] for line in table] == ["exhaustive (baseline)", "flat (auto)", "ivf", "hnsw"]
    assert all(line.startswith("| 1k | ") and line.count("|") == 10 for line in table)
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
