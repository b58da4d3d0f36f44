"""Where indexes, models and caches live: $VSA_HOME, a checkout, or the user's folders when installed."""

from __future__ import annotations

from pathlib import Path

import pytest

import vsa_search
from vsa_search import paths

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
    assert paths.models_dir() == paths.shipped_models_dir() == CHECKOUT / "models"
    assert paths.cache_dir() == CHECKOUT / "cache"
    assert paths.find_model("align") == CHECKOUT / "models" / "align.pt"


def test_vsa_home_wins_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed_layout: Path) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "vh"))
    assert paths.home_source() == "VSA_HOME"
    assert paths.indexes_dir() == tmp_path / "vh" / "indexes"
    assert paths.models_dir() == tmp_path / "vh" / "models"
    assert paths.cache_dir() == tmp_path / "vh" / "cache"


def test_installed_uses_the_user_folders_and_the_package_data(installed_layout: Path) -> None:
    tmp = installed_layout
    assert not paths.in_checkout() and paths.home_source() == "user folders"
    assert paths.indexes_dir() == tmp / "data" / "vsa-search" / "indexes"
    assert paths.models_dir() == tmp / "data" / "vsa-search" / "models"
    assert paths.cache_dir() == tmp / "cache" / "vsa-search"
    assert paths.shared_dir() == tmp / "data" / "vsa-search" / "shared"
    # Shipped models come from the package itself (importlib.resources), not from a source-relative models/.
    assert paths.shipped_models_dir() == Path(vsa_search.__file__).resolve().parent / "shipped_models"
    # A user model of the same name as a shipped one wins.
    mine = paths.models_dir() / "caption.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    assert paths.find_model("caption") == mine
