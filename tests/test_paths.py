"""Where indexes, models and caches live: $VSA_HOME, a checkout, or the user's folders when installed;
and `vsa info`, which says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vsa_search
from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.models.alignment import load_align

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def installed_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package as if installed: its parent folder is no checkout, and the user folders are in tmp."""
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.delenv("VSA_HOME", raising=False)
    monkeypatch.delenv("VSA_SHARED", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_a_checkout_keeps_everything_in_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSA_HOME", raising=False)
    assert paths.in_checkout() and paths.home_source() == "checkout"
    assert paths.indexes_dir() == CHECKOUT / "indexes"
    assert paths.models_dir() == paths.shipped_models_dir() == CHECKOUT / "weights"
    assert paths.cache_dir() == CHECKOUT / "cache"
    assert paths.find_model("align") == CHECKOUT / "weights" / "align.pt"


def test_vsa_home_wins_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed_layout: Path) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "vh"))
    assert paths.home_source() == "VSA_HOME"
    assert paths.indexes_dir() == tmp_path / "vh" / "indexes"
    assert paths.models_dir() == tmp_path / "vh" / "weights"
    assert paths.cache_dir() == tmp_path / "vh" / "cache"


def test_a_model_in_the_older_models_folder_still_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Data roots made before the folder of model files was named weights/ keep their models/ folder.
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.pt").write_bytes(b"x")
    assert paths.find_model("mine") == tmp_path / "models" / "mine.pt"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mine.pt").write_bytes(b"y")
    assert paths.find_model("mine") == tmp_path / "weights" / "mine.pt"  # weights/ first
    assert paths.find_model("align") == paths.shipped_models_dir() / "align.pt"

def test_installed_uses_the_user_folders_and_the_package_data(installed_layout: Path) -> None:
    tmp = installed_layout
    assert not paths.in_checkout() and paths.home_source() == "user folders"
    assert paths.indexes_dir() == tmp / "data" / "vsa-search" / "indexes"
    assert paths.models_dir() == tmp / "data" / "vsa-search" / "weights"
    assert paths.cache_dir() == tmp / "cache" / "vsa-search"
    assert paths.shared_dir() == tmp / "data" / "vsa-search" / "shared"
    # Shipped models come from the package itself (importlib.resources), not from a source-relative weights/.
    assert paths.shipped_models_dir() == Path(vsa_search.__file__).resolve().parent / "shipped_models"
    # A user model of the same name as a shipped one wins.
    mine = paths.models_dir() / "caption.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    assert paths.find_model("caption") == mine


def test_vsa_info_lists_locations_and_the_shipped_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSA_HOME", raising=False)
    r = CliRunner().invoke(app, ["info", "--json"], prog_name="vsa")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == vsa_search.__version__ and info["install"] == "checkout"
    assert info["locations"]["indexes"] == str(CHECKOUT / "indexes")
    models = {m["name"]: m for m in info["shipped_models"]}
    assert set(models) == {p.stem for p in (CHECKOUT / "weights").glob("*.pt")}
    # The fingerprint shown is the one an index records for its model.
    assert models["align"]["fingerprint"] == load_align(CHECKOUT / "weights" / "align.pt").fingerprint
    assert models["align"]["card"] == str(CHECKOUT / "weights" / "align.md")
    assert isinstance(info["cuda"]["available"], bool) and isinstance(info["faiss"]["gpu_usable"], bool)

    text = CliRunner().invoke(app, ["info"], prog_name="vsa").stdout
    assert all(name in text for name in models) and models["align"]["fingerprint"] in text
    assert "CUDA" in text and "faiss-gpu" in text


def test_version_is_single_sourced() -> None:
    r = CliRunner().invoke(app, ["--version"], prog_name="vsa")
    assert r.exit_code == 0 and r.stdout.strip() == vsa_search.__version__
    assert 'dynamic = ["version"]' in (CHECKOUT / "pyproject.toml").read_text()
