from __future__ import annotations

from pathlib import Path

import pytest

from vsa_search.core import paths

FLICKR = paths.flickr8k_root()
# The repo's own sample photos: the core tests run on them, so a fresh clone needs nothing else.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
NO_FLICKR = (f"needs the Flickr8k data at {FLICKR}: set VSA_SHARED to the folder that holds data/flickr8k "
             "(by default ../shared beside the checkout)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"Flickr8k: {FLICKR}" if FLICKR.is_dir() else f"Flickr8k: absent, its tests skip ({NO_FLICKR})"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    flickr = [r for r in skipped if NO_FLICKR in str(r.longrepr)]
    if flickr:
        terminalreporter.write_line(f"{len(flickr)} tests skipped: the Flickr8k data is not at {FLICKR}; set "
                                    "VSA_SHARED to the folder that holds data/flickr8k to run them")
    # -q (pyproject's addopts) hides skip reasons; the browser tests skip as a whole module when
    # Chromium or Playwright is missing, and the reason says how to get them.
    for r in skipped:
        if r.nodeid.startswith("tests/test_serve_browser.py"):
            reason = (r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)).removeprefix("Skipped: ")
            terminalreporter.write_line(f"browser tests (tests/test_serve_browser.py) {reason}")


@pytest.fixture(scope="session")
def flickr_root() -> Path:
    if not FLICKR.is_dir():
        pytest.skip(NO_FLICKR)
    return FLICKR


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """A fixed handful of real photos, in a stable order (the repo's examples/photos)."""
    return sorted(EXAMPLES.glob("*.jpg"))[:8]


@pytest.fixture(scope="session")
def sample_captions() -> dict[str, tuple[str, ...]]:
    """photo name -> its hand-written captions (tests/data/captions.txt, Flickr8k's name#n<TAB>caption)."""
    out: dict[str, list[str]] = {}
    for line in (Path(__file__).parent / "data" / "captions.txt").read_text().splitlines():
        if line:
            key, text = line.split("\t", 1)
            out.setdefault(key.split("#")[0], []).append(text)
    return {k: tuple(v) for k, v in out.items()}


@pytest.fixture(scope="session")
def caption_vocab():
    """A vocabulary from the small hand-written captions of the sample photos (tests/data/captions.txt,
    Flickr8k's name#n<TAB>caption format): enough words for untrained tiny models."""
    from vsa_search.data.text import tokenize
    from vsa_search.data.vocab import Vocab

    lines = (Path(__file__).parent / "data" / "captions.txt").read_text().splitlines()
    return Vocab.build((tokenize(line.split("\t", 1)[1]) for line in lines if line), min_count=1)


@pytest.fixture(scope="session")
def tiny_region_encoder():
    """One CNN for the whole session: loading EfficientNet is the slow part."""
    from vsa_search.core.config import REGION_PRESETS
    from vsa_search.vision.regions import RegionEncoder

    return RegionEncoder(REGION_PRESETS["tiny"], device="cpu")
