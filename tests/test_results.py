"""docs/RESULTS.md is what benchmarks/results.py makes from docs/results/*.json (`make results`): a
figure on the page can only change through the JSON its command writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "results.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_is_what_the_json_gives() -> None:
    results = _results()
    assert (ROOT / "docs" / "RESULTS.md").read_text() == results.render(), \
        "docs/RESULTS.md differs from what docs/results/*.json give: run `make results`"
    assert results.main(["--check"]) == 0


def test_every_json_file_has_its_table_and_every_table_its_file() -> None:
    results = _results()
    read = {f for files, _ in results.SECTIONS for f in files}
    present = {p.name for p in (ROOT / "docs" / "results").glob("*.json")}
    assert present == read, f"JSON no table reads: {present - read}; tables without their JSON: {read - present}"


def test_a_new_figure_in_the_json_reaches_the_page(tmp_path: Path) -> None:
    results = _results()
    shutil.copytree(ROOT / "docs" / "results", tmp_path / "r")
    before = results.render(tmp_path / "r")
    path = tmp_path / "r" / "eval-recall.json"
    report = json.loads(path.read_text())
    report["rows"][0]["metrics"]["image_annotation"]["R@1"] = 31.44
    path.write_text(json.dumps(report))
    after = results.render(tmp_path / "r")
    assert after != before
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert len(changed) == 1 and changed[0].split(" | ")[1].startswith("31.4 [")
    path.unlink()
    assert "## Retrieval" not in results.render(tmp_path / "r")  # its section goes with its file


def test_the_page_names_the_stores_its_figures_came_from(tmp_path: Path) -> None:
    results = _results()
    shutil.copytree(ROOT / "docs" / "results", tmp_path / "r")
    recall = json.loads((tmp_path / "r" / "eval-recall.json").read_text())
    captions = json.loads((tmp_path / "r" / "eval-caption-ensemble.json").read_text())
    intro = results.render(tmp_path / "r").split("## ")[0]
    assert f"`{recall['features']}`" in intro and f"`{captions['features']}`" in intro
    recall["features"] = "cache/features/elsewhere"
    (tmp_path / "r" / "eval-recall.json").write_text(json.dumps(recall))
    assert "`cache/features/elsewhere`" in results.render(tmp_path / "r").split("## ")[0]
