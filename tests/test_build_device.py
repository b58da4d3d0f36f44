"""`vsa index build` runs the CNN and the alignment model on the one device core/device chooses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny_align import tiny_model
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.cli import index as cli_index
from vsa_search.core.device import pick_device
from vsa_search.index import photos as photos_mod
from vsa_search.models import alignment


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tiny_region_encoder) -> dict[str, torch.device]:
    """CUDA looks present; the device each model is asked for is recorded, and both really run
    on the CPU (this machine may have no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen: dict[str, torch.device] = {}
    real_load = alignment.load_align

    def load_align(path, device="cpu"):
        seen["alignment model"] = torch.device(device)
        return real_load(path, "cpu")

    def region_encoder(cfg, device=None, top=None):
        seen["CNN"] = pick_device(device)  # what RegionEncoder itself would pick
        return tiny_region_encoder

    monkeypatch.setattr(cli_index, "load_align", load_align)
    monkeypatch.setattr(alignment, "load_align", load_align)  # index.build imports it when called
    monkeypatch.setattr(photos_mod, "RegionEncoder", region_encoder)
    return seen


@pytest.fixture
def setup(tmp_path: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_photos[:2]:
        shutil.copy2(p, photos / p.name)
    return photos, tiny_model(tmp_path / "tiny.pt")


@pytest.mark.parametrize("given", [None, "cpu"])
def test_cli_build_puts_both_models_on_one_device(setup, recorded, given: str | None) -> None:
    photos, model = setup
    args = ["index", "build", str(photos), "--index", "x", "--model", str(model)]
    r = CliRunner().invoke(app, args + (["--device", given] if given else []), prog_name="vsa")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    want = torch.device(given or "cuda")  # the default is CUDA when present, for both
    assert recorded == {"alignment model": want, "CNN": want}


def test_library_build_puts_both_models_on_one_device(setup, recorded) -> None:
    photos, model = setup
    ix.build([photos], "y", model=model)
    assert recorded == {"alignment model": torch.device("cuda"), "CNN": torch.device("cuda")}


@pytest.mark.parametrize(("device", "says"), [("cuda", "no CUDA device is available here"),
                                               ("gpu", "not a device")])
def test_a_device_that_is_not_here_is_one_error_line(device: str, says: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    photo = Path(__file__).resolve().parents[1] / "examples" / "photos" / "coffee.jpg"
    r = CliRunner().invoke(app, ["caption", str(photo), "--device", device], prog_name="vsa")
    assert r.exit_code == 2, (r.stdout, r.stderr, r.exception)
    assert says in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
