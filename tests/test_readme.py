"""The newcomer's path: `vsa --help` without the heavy libraries, and every `$ vsa ...` example of the
README run as shown (from a folder holding `examples/`, as a checkout is)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search.cli import app

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = ("FEATS",)  # a feature store of a data set: extracting one is `vsa features extract`'s business


def readme_commands() -> list[list[str]]:
    cmds = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("$ vsa ") and not any(p in line for p in PLACEHOLDERS):
            cmds.append(shlex.split(line[len("$ vsa "):], comments=True))
    return cmds


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
    assert {"index", "search", "caption", "align"} <= first


@pytest.mark.slow
def test_readme_examples_run_as_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    for args in readme_commands():
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        if "--paths" in args:
            assert len(res.stdout.splitlines()) == 3
    for made in ("hits.png", "like.png", "dense.png", "fig.png"):
        assert (tmp_path / made).stat().st_size > 0
