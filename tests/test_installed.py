"""The package as a user gets it: build the wheel, install it into a fresh virtual environment, and
from a folder outside the checkout (no $VSA_HOME, HOME in a temporary folder) index, search and
caption the sample photos with the models that travel inside the wheel."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import vsa_search
from vsa_search.core import paths

ROOT = paths.REPO_ROOT
PHOTOS = ROOT / "examples" / "photos"
# The wheel is built from a copy of these: an in-tree build would leave build/ and *.egg-info in the
# checkout, and a stale build/lib could carry models that weights/ no longer has.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "vsa_search", "weights")
SETUPTOOLS_MIN = 77  # pyproject.toml's build-system requirement (SPDX licence string)

pytestmark = pytest.mark.slow


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = [m for m in ("pip", "setuptools", "venv") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"cannot build and install a wheel here: {', '.join(missing)} not importable "
                    f"(pip install 'vsa-search[dev]')")
    setuptools_version = importlib.metadata.version("setuptools")
    if int(setuptools_version.split(".")[0]) < SETUPTOOLS_MIN:
        pytest.skip(f"cannot build a wheel here: setuptools {setuptools_version} is older than the "
                    f"{SETUPTOOLS_MIN} that pyproject.toml needs (pip install 'vsa-search[dev]')")
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VSA_HOME", "VSA_SHARED")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
         clean, tmp)
    wheel = next((tmp / "dist").glob("*.whl"))

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], clean, tmp)
    py = venv / "bin" / "python"
    _run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], clean, tmp)
    # Reuse the running environment's dependencies (torch, faiss, ...) instead of installing them:
    # plain path lines, so that its .pth files (an editable vsa_search among them) stay unprocessed.
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        clean, tmp).stdout.strip())
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")]) if Path(p).is_dir()]
    (purelib / "_vsa_test_shared_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    home, work = tmp / "home", tmp / "elsewhere"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in clean.items() if not k.startswith("XDG_")}
    env["HOME"] = str(home)
    return {"wheel": wheel, "vsa": venv / "bin" / "vsa", "purelib": purelib, "home": home, "work": work,
            "env": env}  # type: ignore[dict-item]


def test_wheel_carries_the_shipped_models(installed: dict) -> None:
    assert f"-{vsa_search.__version__}-" in installed["wheel"].name
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = sorted(p for p in (ROOT / "weights").iterdir() if p.suffix in (".pt", ".md"))
    assert shipped
    assert {f"vsa_search/shipped_models/{p.name}" for p in shipped} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/", "indexes/")) for n in names)


def test_installed_vsa_indexes_searches_and_captions(installed: dict) -> None:
    vsa, env, work, home = str(installed["vsa"]), installed["env"], installed["work"], installed["home"]
    purelib: Path = installed["purelib"]

    # One version everywhere: the installed distribution, the package, `vsa info` (`vsa --version` is
    # tested in test_paths.py; each command here costs seconds of start-up).
    assert (purelib / f"vsa_search-{vsa_search.__version__}.dist-info").is_dir()
    info = json.loads(_run([vsa, "info", "--json"], env, work).stdout)
    assert info["version"] == vsa_search.__version__ and info["install"] == "installed"
    assert Path(info["package"]) == purelib / "vsa_search"
    assert Path(info["locations"]["shipped_models"]) == purelib / "vsa_search" / "shipped_models"
    assert info["locations"]["data_home"]["source"] == "user folders"
    for key in ("indexes", "user_models", "cache"):
        assert Path(info["locations"][key]).is_relative_to(home), (key, info["locations"][key])
    # The installed models are the checkout's files, byte for byte, each read and fingerprinted.
    got = {m["name"]: m for m in info["shipped_models"]}
    assert set(got) == {p.stem for p in (ROOT / "weights").glob("*.pt")}
    for name, m in got.items():
        assert _sha(Path(m["path"])) == _sha(ROOT / "weights" / f"{name}.pt")
        assert len(m["fingerprint"]) == 16 and m["kind"] in ("align", "caption") and "error" not in m

    n_photos = len([p for p in PHOTOS.iterdir() if p.suffix == ".jpg"])
    built = json.loads(_run([vsa, "index", "build", str(PHOTOS), "--json"], env, work).stdout)
    assert built["encoded"] == n_photos and not built["skipped"]
    assert built["model"] == got["align"]["fingerprint"]
    assert Path(built["index"]).is_relative_to(Path(info["locations"]["indexes"]))
    assert Path(built["index"]).exists()

    found = json.loads(_run([vsa, "search", "a cup of coffee", "-k", "3", "--json"], env, work).stdout)
    assert Path(found["hits"][0]["path"]).name == "coffee.jpg"

    cap = json.loads(_run([vsa, "caption", str(PHOTOS / "coffee.jpg"), "--beam", "3", "--json"], env, work).stdout)
    assert len(cap) == 1 and len(cap[0]["caption"].split()) >= 3 and cap[0]["logprob"] < 0

    # Nothing was written into the installed package or beside it.
    for p in (purelib / "indexes", purelib / "vsa_search" / "indexes", purelib / "models", purelib / "cache"):
        assert not p.exists(), p
