"""The newcomer's path: `vsa --help` without the heavy libraries, and every `$ vsa ...` example of the
README run as shown (from a folder holding `examples/`, as a checkout is): it must succeed and print the
lines shown under it, so an example the code has moved away from fails here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search.cli import app

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = ("FEATS",)  # a feature store of a data set: extracting one is `vsa features extract`'s business


def readme_examples() -> list[tuple[list[str], list[str]]]:
    """Every `$ vsa ...` line of the README's code blocks, with the output lines shown under it
    (up to the next `$ ` line or the end of the block)."""
    examples: list[tuple[list[str], list[str]]] = []
    in_block = False
    current: list[str] | None = None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_block, current = not in_block, None
        elif in_block and line.startswith("$ "):
            current = None
            if line.startswith("$ vsa ") and not any(p in line for p in PLACEHOLDERS):
                current = []
                examples.append((shlex.split(line[len("$ vsa "):], comments=True), current))
        elif in_block and current is not None and line.strip():
            current.append(line)
    return examples


def readme_commands() -> list[list[str]]:
    return [args for args, _ in readme_examples()]


# A path is shown from the folder it lives in (the README's checkout was elsewhere): normalise
# everything before examples/, indexes/ and weights/ to "…/".
_PATH = re.compile(r"(?<![\w.])/\S*?/(?=(?:examples|indexes|weights)/)")
_NUMBER = re.compile(r"^\(?(-?\d+\.\d+)\)?,?$")


def _same_line(shown: str, got: str) -> bool:
    """Word by word (spacing aside); a decimal may differ by 2 in its last shown digit (floating-point
    sums differ by platform), everything else must be equal."""
    a, b = _PATH.sub("…/", shown).split(), _PATH.sub("…/", got).split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        mx, my = _NUMBER.match(x), _NUMBER.match(y)
        if mx and my and x.replace(mx[1], "") == y.replace(my[1], ""):
            places = len(mx[1].split(".")[1])
            if abs(float(mx[1]) - float(my[1])) > 2.01 * 10 ** -places:
                return False
        elif x != y:
            return False
    return True


def stale(args: list[str], shown: list[str], got: str) -> str | None:
    """None when `got` prints the lines shown, else what it prints instead."""
    lines = [line for line in got.splitlines() if line.strip()]
    if len(lines) == len(shown) and all(_same_line(s, g) for s, g in zip(shown, lines)):
        return None
    return f"$ vsa {shlex.join(args)}\n" + "\n".join(lines)


def test_help_loads_no_torch_faiss_or_timm() -> None:
    code = ("import sys; from typer.testing import CliRunner; from vsa_search.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'search' in r.stdout, r.stdout; "
            "print(sorted({'torch', 'faiss', 'timm', 'lmdb'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_readme_has_examples_of_every_query_command() -> None:
    first = {c[0] for c in readme_commands()}
    assert {"index", "search", "caption", "align", "dupes"} <= first
    searches = [c for c in readme_commands() if c[0] == "search"]
    for option in ("--like", "--minus", "--after", "--camera", "--near"):
        assert any(option in c for c in searches), option


def test_the_readme_headline_table_is_what_the_results_json_gives() -> None:
    """The README's one results table is made by `make results` from docs/results/*.json, as
    docs/RESULTS.md is: a figure typed into it by hand, or JSON updated without `make results`, fails."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "results.py")
    assert spec and spec.loader
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    readme = (ROOT / "README.md").read_text()
    assert results.readme_with_headline(readme) == readme, "run `make results`"
    typed = readme.replace(results.HEADLINE[1], "| hand-typed | 99.9 |\n" + results.HEADLINE[1])
    assert results.readme_with_headline(typed) == readme  # a row typed in by hand is replaced


def test_the_readme_links_lead_to_files_and_stay_short() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    for name in ("docs/RESULTS.md", "docs/DESIGN.md", *(f"weights/{p.name}" for p in (ROOT / "weights").glob("*.md"))):
        assert name in links, f"the README does not link {name}"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"the README links files that do not exist: {missing}"
    assert len(readme.splitlines()) <= 350, "the README is a front page: measured tables go to docs/RESULTS.md"


def test_shown_output_is_compared_word_by_word() -> None:
    shown = ["  1    0.0180  /work/main/examples/photos/coffee.jpg", "            a [0, 0, 100, 69]  (-9.99)"]
    args = ["search", "a cup"]
    here = "  1  0.0181  /tmp/x/examples/photos/coffee.jpg\n\n a [0, 0, 100, 69] (-9.98)\n"
    assert stale(args, shown, here) is None  # other folder, spacing, last digit
    assert stale(args, shown, here.replace("0.0181", "0.0190"))  # another score
    assert stale(args, shown, here.replace("100, 69", "100, 70"))  # another box
    assert stale(args, shown, here.replace("coffee", "retina"))  # another photo
    assert stale(args, shown, here + "  2   -0.1239  /tmp/x/examples/photos/chelsea-cat.jpg\n")  # a line more


@pytest.mark.slow
def test_readme_examples_run_as_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    wrong = []
    for args, shown in readme_examples():
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        if shown:
            wrong.append(stale(args, shown, res.output))
        if "--paths" in args:
            assert len(res.stdout.splitlines()) == 3
    wrong = [w for w in wrong if w]
    assert not wrong, "the README shows other output than these examples print now:\n" + "\n".join(wrong)
    for made in ("hits.png", "like.png", "dense.png", "fig.png"):
        assert (tmp_path / made).stat().st_size > 0


def test_skipped_browser_tests_say_how_to_get_chromium(tmp_path: Path) -> None:
    """`make test` (pytest -q, which hides skip reasons) names what the browser tests need when
    Chromium is missing, instead of a bare "1 skipped"."""
    env = {k: v for k, v in os.environ.items() if k != "VSA_CHROMIUM"}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT))  # a PATH without chromium
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_serve_browser.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stdout + proc.stderr  # pytest's "no tests collected": all skipped
    assert "1 skipped" in proc.stdout
    assert "apt-get install chromium" in proc.stdout, proc.stdout
