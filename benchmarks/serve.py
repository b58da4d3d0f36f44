"""Text-query latency: `vsa serve` over HTTP (warm: models and index loaded once) against a new
`vsa search` process per query (the baseline, measured in the same run), on the same index with the
same queries. Also 20 concurrent clients against the server, counting errors.

    vsa index build PHOTOS --index NAME              # e.g. the 1,000 Flickr8k test photos
    python benchmarks/serve.py --index NAME [--queries 100] [--clients 20] [--cli-queries 10]

"server time" is the Server-Timing the server reports (the library's search), the rest of a
round trip is HTTP and JSON. The CLI's JSON for each of its queries must equal the server's (less
the `id` and `size` the server adds to each hit); a difference is reported as an error."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

QUERIES = [
    "a dog runs on the grass", "two children play in the water", "a man in a red shirt climbs a rock",
    "a black dog", "a girl in a pink dress", "people walk down a busy street", "a skier on a snowy mountain",
    "a boy rides a bike", "a brown dog with a ball in its mouth", "a woman sits on a bench",
    "a group of people stand outside", "a surfer rides a wave", "a white dog jumps over a fence",
    "two men play football", "a child in a swimming pool", "a man with a camera", "a dog in the snow",
    "a little girl smiles", "a crowd at a concert", "a cyclist on a dirt road",
]
ROOT = Path(__file__).resolve().parent.parent


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.mean())


def note(what: str, ms: list[float]) -> None:
    """Each phase's figures on stderr as soon as they exist: on a busy machine a run may not finish."""
    if ms:
        p50, p95, _ = percentiles(ms)
        print(f"{what}: {len(ms)} queries, p50 {p50:.1f} ms, p95 {p95:.1f} ms", file=sys.stderr, flush=True)


def start_server(index: str, env: dict[str, str]) -> tuple[subprocess.Popen, int, float]:
    """`vsa serve --port 0` as a child process; returns it, its port (read from its stderr line) and
    the seconds it took to load."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vsa_search", "serve", "--index", index, "--port", "0"],
                            env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("serving"):
            port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining the log
            return proc, port, time.perf_counter() - t0
        sys.stderr.write(line)
    raise SystemExit(f"vsa serve exited ({proc.wait()}) before serving")


def query(conn: http.client.HTTPConnection, q: str, k: int) -> tuple[float, float, dict]:
    """(round trip ms, server ms, JSON) of one text query on a kept-alive connection."""
    t0 = time.perf_counter()
    conn.request("GET", f"/api/search?{urllib.parse.urlencode({'q': q, 'k': k})}")
    r = conn.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1000
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
    server = float((r.getheader("Server-Timing") or "app;dur=nan").split("dur=")[1])
    return ms, server, json.loads(body)


def concurrent(port: int, clients: int, per_client: int, k: int) -> tuple[list[float], list[str], float]:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        gate.wait()
        for j in range(per_client):
            try:
                ms, _, _ = query(conn, QUERIES[(c + j) % len(QUERIES)], k)
                with lock:
                    lat.append(ms)
            except Exception as e:  # counted, not raised: the point is how many fail
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="default", help="index name (under $VSA_HOME/indexes) or path")
    ap.add_argument("--queries", type=int, default=100, help="sequential HTTP queries")
    ap.add_argument("--clients", type=int, default=20, help="concurrent HTTP clients")
    ap.add_argument("--per-client", type=int, default=10, help="queries per concurrent client")
    ap.add_argument("--cli-queries", type=int, default=10, help="`vsa search` processes (seconds each)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the rows here (`make results` renders docs/RESULTS.md)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    proc, port, load_s = start_server(args.index, env)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        status = json.loads((conn.request("GET", "/api/status"), conn.getresponse().read())[1])
        for q in QUERIES[:3]:
            query(conn, q, args.k)  # warm-up: first-touch of the index pages and the model
        seq, seq_server, answers = [], [], {}
        for i in range(args.queries):
            q = QUERIES[i % len(QUERIES)]
            ms, server_ms, body = query(conn, q, args.k)
            seq.append(ms)
            seq_server.append(server_ms)
            answers[q] = body
        conn.close()
        note("1 client, round trip", seq)
        note("1 client, server time", seq_server)
        par, errors, wall = concurrent(port, args.clients, args.per_client, args.k)
        note(f"{args.clients} clients, round trip ({len(errors)} errors)", par)
    finally:
        proc.terminate()
        proc.wait(30)

    cli, mismatches = [], 0
    for q in QUERIES[:args.cli_queries]:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vsa_search", "search", q, "--index", args.index, "-k",
                            str(args.k), "--json"], env=env, capture_output=True, text=True)
        cli.append((time.perf_counter() - t0) * 1000)
        note("`vsa search` processes", cli)
        want = json.loads(r.stdout) if r.returncode == 0 else None
        got = answers.get(q) or {}
        for h in got.get("hits", []):
            h.pop("id", None), h.pop("size", None)
        mismatches += want != got

    p = status["photos"]
    cli50 = percentiles(cli)[0]
    threads = os.environ.get("OMP_NUM_THREADS", "-")
    print(f"index {status['index']}: {p['photos']} photos, {p['regions']} regions ({p['index_type']}); "
          f"server loaded in {load_s:.1f} s; {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}")
    print()
    print("| text query, top 10 | queries | p50 ms | p95 ms | mean ms | errors | p50 × faster than CLI |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("`vsa search` process per query (baseline)", cli, 0),
        ("`vsa serve`, 1 client, HTTP round trip", seq, 0),
        ("`vsa serve`, 1 client, server time (Server-Timing)", seq_server, 0),
        (f"`vsa serve`, {args.clients} concurrent clients, round trip", par, len(errors)),
    ]
    for name, ms, err in rows:
        p50, p95, mean = percentiles(ms) if ms else (float("nan"),) * 3
        print(f"| {name} | {len(ms) + err} | {p50:.1f} | {p95:.1f} | {mean:.1f} | {err} | {cli50 / p50:.1f} |")
    print()
    print(f"{args.clients} clients: {len(par)} answers in {wall:.1f} s ({len(par) / wall:.1f} queries/s), "
          f"{len(errors)} errors" + (f" (first: {errors[0]})" if errors else ""))
    print(f"CLI JSON equal to the server's for {args.cli_queries - mismatches} of {args.cli_queries} queries")
    if args.json:
        args.json.write_text(json.dumps({
            "index": status["index"], "photos": p["photos"], "regions": p["regions"], "index_type": p["index_type"],
            "load_s": load_s, "omp_threads": threads, "clients": args.clients, "wall_s": wall,
            "answers": len(par), "errors": len(errors), "cli_queries": args.cli_queries, "mismatches": mismatches,
            "rows": [{"name": name, "queries": len(ms) + err, "errors": err,
                      **dict(zip(("p50_ms", "p95_ms", "mean_ms"), percentiles(ms) if ms else (None,) * 3))}
                     for name, ms, err in rows]}, indent=1) + "\n")
    if errors or mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
