"""The index both `vsa serve` test files run against: the 12 sample photos (and one file that is not a
photo, so the index has a skipped file) indexed with the shipped model, plus a small sentence index.
Built once per test session, whichever file asks first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vsa_search import index
from vsa_search.cli import app
from vsa_search.core import paths

EXAMPLES = paths.REPO_ROOT / "examples" / "photos"
SENTENCES = [
    "a cup of coffee on a saucer",
    "a cat with green eyes looks at the camera",
    "a black horse stands in the snow",
    "a man with a camera on a tripod",
    "a woman in an orange suit smiles",
    "a rocket on the launch pad at night",
    "a dog runs on the grass",
    "two children play in the water",
]
_BUILT: dict[str, Path] = {}


def demo_index(factory: pytest.TempPathFactory) -> Path:
    """The path of the demo photo index (its sentence twin beside it)."""
    if "index" not in _BUILT:
        root = factory.mktemp("serve")
        photos = root / "photos"
        shutil.copytree(EXAMPLES, photos, ignore=shutil.ignore_patterns("*.md"))
        (photos / "not-a-photo.jpg").write_bytes(b"this is text, not a jpeg")
        link = root / "indexes" / "demo"
        index.build([photos], name=link)
        text = root / "sentences.txt"
        text.write_text("\n".join(SENTENCES) + "\n")
        # with the shipped generator, so that the server's photo-to-text path re-ranks as the CLI's does
        res = CliRunner().invoke(app, ["index", "text", str(text), "--index", str(link), "--generator",
                                       "caption-ensemble", "--json"])
        assert res.exit_code == 0, res.stderr
        _BUILT["index"] = link
    return _BUILT["index"]
