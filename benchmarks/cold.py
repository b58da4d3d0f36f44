"""Cold start: each command in a new process, as a user types it, against `python -c 'import numpy,
faiss, lmdb'` (the floor any search pays) measured in the same run, rounds interleaved so that load
on the machine falls on every row alike.

    vsa index build PHOTOS --index NAME        # e.g. a folder of the 1,000 Flickr8k test photos
    python benchmarks/cold.py --index NAME [--runs 15] [--photo examples/photos/coffee.jpg]
    python benchmarks/cold.py --index NAME --code ../main --code .    # two versions, in the same rounds

The code under test (`--code`, default this checkout; repeat it to compare versions) is copied to
a temporary folder and compiled there first (as an installed package ships its .pyc files; this way
no checkout is written to), and every process runs from that folder's parent with PYTHONPATH set
to it. A first, untimed round warms the page cache and lets the code make what it makes once (a
model's text export, the concept bridge's table); the rows are the rounds after it."""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ["a dog runs on the grass", "two children play in the water", "a man in a red shirt climbs a rock",
           "a black dog", "a girl in a pink dress", "people walk down a busy street", "a skier on a snowy mountain",
           "a boy rides a bike", "a brown dog with a ball in its mouth", "a woman sits on a bench"]


def stage(code: Path, into: Path) -> Path:
    """A compiled copy of `code`'s package, beside links to its models and pyproject.toml (so that it
    still reads as a checkout and finds its shipped models)."""
    shutil.copytree(code / "vsa_search", into / "vsa_search", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("weights", "models", "pyproject.toml"):  # models/: where code before weights/ keeps them
        if (code / name).exists():
            (into / name).symlink_to((code / name).resolve())
    if not compileall.compile_dir(into / "vsa_search", quiet=1, force=True):
        raise SystemExit(f"{code}: the package does not compile")
    return into


def commands(index: str, photo: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    q = "{query}"
    return {
        "python -c 'import numpy, faiss, lmdb' (baseline)": py + ["-c", "import numpy, faiss, lmdb"],
        "vsa --help": py + ["-m", "vsa_search", "--help"],
        "vsa search": py + ["-m", "vsa_search", "search", q, "--index", index],
        "vsa search --no-bridge": py + ["-m", "vsa_search", "search", q, "--index", index, "--no-bridge"],
        "vsa caption": py + ["-m", "vsa_search", "caption", str(photo.resolve())],
    }


def run_once(argv: list[str], env: dict[str, str], cwd: Path, query: str) -> float:
    argv = [a.replace("{query}", query) for a in argv]
    t = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="photo index to search (in $VSA_HOME or the checkout)")
    ap.add_argument("--runs", type=int, default=15, help="timed rounds (after one untimed)")
    ap.add_argument("--code", type=Path, action="append", help="checkout whose code to time (default: this one; "
                                                                "repeat to compare versions in the same rounds)")
    ap.add_argument("--photo", type=Path, default=ROOT / "examples" / "photos" / "coffee.jpg")
    ap.add_argument("--only", default="", help="comma-separated substrings: time only the rows that match")
    ap.add_argument("--json", type=Path, help="also write the timings here")
    a = ap.parse_args()
    codes = [c.resolve() for c in a.code or [ROOT]]
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vsa-cold-") as tmp:
        rows: dict[tuple[str, str], tuple[list[str], dict[str, str]]] = {}
        for j, c in enumerate(codes):
            staged = stage(c, Path(tmp) / f"code{j}")
            env = {**os.environ, "PYTHONPATH": str(staged)}
            env.setdefault("VSA_HOME", str(c))  # the checkout's indexes and cache by default
            for name, argv in commands(a.index, a.photo).items():
                if "baseline" in name and j:
                    continue  # one baseline row serves every version
                if "baseline" in name or not a.only or any(s in name for s in a.only.split(",")):
                    rows[(name, str(c) if "baseline" not in name else "")] = (argv, env)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in rows}
        for r in range(a.runs + 1):
            for key, (argv, env) in rows.items():
                dt = run_once(argv, env, Path(tmp), QUERIES[r % len(QUERIES)])
                if r:
                    times[key].append(dt)
    base = float(np.median(next(iter(times.values()))))
    print(f"cold start, {a.runs} runs each, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| command | code | p50 s | p95 s | p50 / baseline |")
    print("|---|---|---|---|---|")
    for (name, code), ts in times.items():
        p50, p95 = float(np.percentile(ts, 50)), float(np.percentile(ts, 95))
        print(f"| {name} | {code} | {p50:.2f} | {p95:.2f} | {p50 / base:.1f}x |")
    if a.json:
        a.json.write_text(json.dumps({"load": load0, "load_end": os.getloadavg()[0], "runs": a.runs, "rows": [
            {"command": n, "code": c, "p50_s": float(np.percentile(ts, 50)), "p95_s": float(np.percentile(ts, 95)),
             "seconds": ts} for (n, c), ts in times.items()]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
