"""`make demo`: index the shipped sample photos with the shipped models, run a few searches and
captions, and write a contact sheet, showing each `vsa` command as it runs. Run it again and
nothing is re-encoded (the index is incremental)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from .core import paths

PHOTOS = paths.REPO_ROOT / "examples" / "photos"
QUERIES = ["a cat", "a cup of coffee", "a woman in a white shirt"]
CAPTIONED = ["chelsea-cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]


def build_step(photos: Path = PHOTOS, *model: str) -> tuple[str, ...]:
    """The demo's index build. --replace: the index holds the sample photos alone, so a shipped model that
    changed since the last run (an update) encodes them again instead of refusing; the same model re-encodes
    nothing."""
    return ("index", "build", str(photos), "--index", "demo", "--replace", *model)


def vsa(*args: str, capture: bool = False) -> str:
    print(f"\n$ vsa {shlex.join(args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "vsa_search", *args], text=True,
                       stdout=subprocess.PIPE if capture else None)
    if r.returncode != 0:
        raise SystemExit(f"demo: `vsa {shlex.join(args)}` failed with exit code {r.returncode}")
    return r.stdout or ""


def main() -> None:
    t0 = time.perf_counter()
    out_dir = paths.home() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet = out_dir / "search-cat.png"

    # The build's own report and progress bar (on stderr), as a user typing the command sees them.
    print("(the first run encodes the 12 photos: about a second each on a CPU)", flush=True)
    vsa(*build_step())
    vsa("index", "status", "--index", "demo")
    vsa("search", QUERIES[0], "--index", "demo", "-k", "3", "--sheet", str(sheet))
    for q in QUERIES[1:]:
        vsa("search", q, "--index", "demo", "-k", "3")
    vsa("caption", *[str(PHOTOS / p) for p in CAPTIONED], "--beam", "3")

    print(f"\nDemo finished in {time.perf_counter() - t0:.0f} s.")
    print(f"Contact sheet of the '{QUERIES[0]}' search (boxes labelled by the words they matched): {sheet}")
    print("Run `make demo` again: the index is incremental, so nothing is re-encoded.")


if __name__ == "__main__":
    main()
