"""Photo files as they are on disk: any name a file system allows (bytes that are not UTF-8, newlines)
comes out of every JSON answer, CLI and server alike, as valid UTF-8 text with the exact bytes beside
it, and out of `vsa search --paths --null` as raw bytes; the server serves a photo only while it is
the regular file that was indexed, inside the index's folders."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="vsa serve needs starlette (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (pip install -e '.[dev]')")
hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis (pip install -e '.[dev]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from tiny_align import tiny_model  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vsa_search import index  # noqa: E402
from vsa_search.cli import app as cli  # noqa: E402
from vsa_search.core import paths  # noqa: E402
from vsa_search.core.errors import ImageMissingError  # noqa: E402
from vsa_search.index.files import IndexedFiles  # noqa: E402
from vsa_search.models.alignment import load_align  # noqa: E402
from vsa_search.serve import Engine, create_app  # noqa: E402

EXAMPLES = paths.REPO_ROOT / "examples" / "photos"
COFFEE, CAT = EXAMPLES / "coffee.jpg", EXAMPLES / "chelsea-cat.jpg"
NAMES = [b"plain.jpg", b"latin\xff\xfe.jpg", b"new\nline.jpg", "caf\u00e9 \u2603.jpg".encode()]
runner = CliRunner()


class Library:
    """One folder (its own name not UTF-8 either), its index and a server over it: each test puts the
    photos it needs in the folder and rebuilds; the same content is never encoded twice."""

    def __init__(self, root: Path, encoder: Any):
        self.root = root
        self.folder = root / os.fsdecode(b"photos-\xff")
        self.folder.mkdir()
        self.link = root / "indexes" / "lib"
        self.model = load_align(tiny_model(root / "tiny.pt"))
        self.encoder = encoder
        self.fill({name: COFFEE for name in NAMES})
        self.client = TestClient(create_app(Engine(str(self.link))), raise_server_exceptions=False)

    def fill(self, files: dict[bytes, Path]) -> None:
        for p in os.listdir(os.fsencode(self.folder)):
            os.unlink(os.path.join(os.fsencode(self.folder), p))
        for name, src in files.items():
            shutil.copy2(src, os.path.join(os.fsencode(self.folder), name))
        index.build_photos([self.folder], self.model, self.link, encoder=self.encoder)

    def file(self, name: bytes) -> bytes:
        return os.path.join(os.fsencode(self.folder), name)

    def cli(self, *args: str) -> Any:
        return runner.invoke(cli, [*args, "--index", str(self.link)], prog_name="vsa")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, tiny_region_encoder: Any) -> Library:
    return Library(tmp_path_factory.mktemp("files"), tiny_region_encoder)


def path_bytes(d: dict[str, Any], field: str = "path") -> bytes:
    """The exact bytes of a path field: its base64 twin when there is one, else its UTF-8 text."""
    b64 = d.get(f"{field}_bytes_b64")
    return base64.b64decode(b64) if b64 is not None else d[field].encode("utf-8")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as a strict consumer (jq, node) would: no lone surrogate may hide in a string."""
    obj = json.loads(text)

    def walk(o: Any) -> None:
        if isinstance(o, str):
            o.encode("utf-8")  # raises on a lone surrogate (\udcff)
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj)
    return obj


def api(lib: Library, url: str, **params: Any) -> Any:
    r = lib.client.get(url, params=params)
    assert r.status_code == 200, (url, r.status_code, r.text)
    return strict_json(r.content)


# --------------------------------------------------------------------------- names that are not UTF-8


def test_server_answers_every_name(lib: Library) -> None:
    lib.fill({name: COFFEE for name in NAMES})
    want = sorted(lib.file(n) for n in NAMES)
    rows = api(lib, "/api/photos")["photos"]
    assert sorted(path_bytes(r) for r in rows) == want
    assert "\ufffd" in next(r["path"] for r in rows if b"latin" in path_bytes(r))  # shown as text, lossy
    for r in rows:
        assert path_bytes(api(lib, f"/api/photos/{r['id']}")) == path_bytes(r)
        full = lib.client.get(f"/api/photos/{r['id']}/image", params={"full": 1})
        assert full.status_code == 200 and full.content == COFFEE.read_bytes()
    hits = api(lib, "/api/search", q="a dog on the grass", k=10)["hits"]
    assert sorted(path_bytes(h) for h in hits) == want
    assert {h["id"]: path_bytes(h) for h in hits} == {r["id"]: path_bytes(r) for r in rows}
    status = api(lib, "/api/status")
    assert [base64.b64decode(b) for b in status["photos"]["roots_bytes_b64"]] == [os.fsencode(lib.folder)]
    api(lib, "/api/skipped")


def test_cli_json_is_valid_utf8_with_the_exact_bytes(lib: Library) -> None:
    lib.fill({name: COFFEE for name in NAMES})
    res = lib.cli("search", "a dog on the grass", "-k", "10", "--json")
    assert res.exit_code == 0, res.stderr
    hits = strict_json(res.stdout_bytes)["hits"]
    assert sorted(path_bytes(h) for h in hits) == sorted(lib.file(n) for n in NAMES)
    res = lib.cli("index", "status", "--json")
    assert res.exit_code == 0, res.stderr
    status = strict_json(res.stdout_bytes)
    assert status["photos"]["roots"] == [os.fsencode(lib.folder).decode("utf-8", "replace")]
    assert [base64.b64decode(b) for b in status["photos"]["roots_bytes_b64"]] == [os.fsencode(lib.folder)]
    res = lib.cli("search", "a dog on the grass", "-k", "10")  # the table: readable text, no crash
    assert res.exit_code == 0 and "latin\ufffd\ufffd.jpg" in res.stdout, res.stderr


def test_build_report_and_align_json_keep_the_bytes(lib: Library) -> None:
    lib.fill({name: COFFEE for name in NAMES})
    broken = lib.file(b"broken\xff.jpg")
    with open(broken, "wb") as f:
        f.write(b"not a jpeg")
    try:
        res = lib.cli("index", "build", "--model", str(lib.root / "tiny.pt"), "--json")
        assert res.exit_code == 0, res.stderr
        [skipped] = strict_json(res.stdout_bytes)["skipped"]
        assert path_bytes(skipped) == broken and path_bytes(skipped, "reason").startswith(broken + b": ")
    finally:
        os.unlink(broken)
    photo = os.fsdecode(lib.file(b"latin\xff\xfe.jpg"))
    res = runner.invoke(cli, ["align", photo, "a dog on the grass", "--model", str(lib.root / "tiny.pt"),
                              "--index", str(lib.link), "--json"], prog_name="vsa")
    assert res.exit_code == 0, res.stderr
    out = strict_json(res.stdout_bytes)
    assert path_bytes(out, "photo") == os.fsencode(photo) and out["regions_from"] == f"index {lib.link}"


def test_cli_paths_null_gives_raw_bytes(lib: Library) -> None:
    lib.fill({name: COFFEE for name in NAMES})
    for flag in ("--null", "-0"):
        res = lib.cli("search", "a dog on the grass", "-k", "10", "--paths", flag)
        assert res.exit_code == 0, res.stderr
        assert res.stdout_bytes.endswith(b"\0")
        assert sorted(res.stdout_bytes[:-1].split(b"\0")) == sorted(lib.file(n) for n in NAMES)


def test_cli_paths_lines(lib: Library) -> None:
    lib.fill({name: COFFEE for name in NAMES if b"\n" not in name})
    res = lib.cli("search", "a dog on the grass", "-k", "10", "--paths")
    assert res.exit_code == 0, res.stderr
    assert sorted(res.stdout_bytes.splitlines()) == sorted(lib.file(n) for n in NAMES if b"\n" not in n)
    lib.fill({name: COFFEE for name in NAMES})  # a name with a newline cannot be one line: refused, not split
    res = lib.cli("search", "a dog on the grass", "-k", "10", "--paths")
    assert res.exit_code == 2 and res.stdout_bytes == b"", res.stdout_bytes
    assert res.stderr.startswith("error: ") and "--null" in res.stderr and res.stderr.count("\n") == 1


NAME = st.one_of(
    st.binary(min_size=1, max_size=60),
    st.text(min_size=1, max_size=30).map(lambda s: s.encode("utf-8")),
).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")[:200] + b".jpg")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAME)
def test_any_file_name_survives(lib: Library, name: bytes) -> None:
    """Whatever bytes name the photo, every output gives them back exactly."""
    lib.fill({name: COFFEE})
    want = lib.file(name)
    res = lib.cli("search", "a dog", "--json")
    assert res.exit_code == 0, res.stderr
    assert [path_bytes(h) for h in strict_json(res.stdout_bytes)["hits"]] == [want]
    res = lib.cli("search", "a dog", "--paths", "-0")
    assert res.exit_code == 0 and res.stdout_bytes == want + b"\0", res.stderr
    [row] = api(lib, "/api/photos")["photos"]
    assert path_bytes(row) == want and row.get("changed") is False
    assert [path_bytes(h) for h in api(lib, "/api/search", q="a dog")["hits"]] == [want]
    full = lib.client.get(f"/api/photos/{row['id']}/image", params={"full": 1})
    assert full.status_code == 200 and full.content == COFFEE.read_bytes()


# --------------------------------------------------------------------------- only the indexed file is served


def not_found(r: Any, secret: bytes = b"") -> None:
    assert r.status_code == 404, (r.status_code, r.text)
    assert set(r.json()) == {"error"}
    assert not secret or secret not in r.content


def test_only_the_file_that_was_indexed_is_served(lib: Library, tmp_path: Path) -> None:
    lib.fill({b"a.jpg": COFFEE, b"b.jpg": CAT})
    rows = {path_bytes(r): r for r in api(lib, "/api/photos")["photos"]}
    a, b = rows[lib.file(b"a.jpg")]["id"], rows[lib.file(b"b.jpg")]["id"]
    assert not any(r["changed"] for r in rows.values())
    assert lib.client.get(f"/api/photos/{a}/image", params={"full": 1}).content == COFFEE.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    outside = tmp_path / "coffee.jpg"
    shutil.copy2(COFFEE, outside)  # same bytes, size and mtime as the indexed photo, but outside the folder
    photo = lib.file(b"a.jpg")
    for target in (str(secret), "/etc/passwd", str(outside), os.fsdecode(lib.file(b"b.jpg")), str(tmp_path)):
        os.unlink(photo)
        os.symlink(target, photo)
        for url, params in ((f"/api/photos/{a}/image", {"full": 1}), (f"/api/photos/{a}/image", {}),
                            (f"/api/photos/{a}", {}), (f"/api/photos/{a}/caption", {}),
                            (f"/api/photos/{a}/align", {"sentence": "a dog"})):
            not_found(lib.client.get(url, params=params), b"root:")
        listed = {r["id"]: r["changed"] for r in api(lib, "/api/photos")["photos"]}
        assert listed == {a: True, b: False}, target
    assert lib.client.get(f"/api/photos/{b}/image", params={"full": 1}).content == CAT.read_bytes()
    # A regular file again, but not the one indexed: another size, then the same bytes with a new mtime.
    os.unlink(photo)
    shutil.copy2(CAT, photo)
    not_found(lib.client.get(f"/api/photos/{a}/image", params={"full": 1}))
    os.unlink(photo)
    shutil.copy(COFFEE, photo)
    os.utime(photo, ns=(0, COFFEE.stat().st_mtime_ns + 10**9))
    not_found(lib.client.get(f"/api/photos/{a}/image"))
    assert api(lib, "/api/photos")["photos"][a]["changed"] is True
    os.utime(photo, ns=(0, COFFEE.stat().st_mtime_ns))  # as indexed again: served again
    assert lib.client.get(f"/api/photos/{a}/image", params={"full": 1}).content == COFFEE.read_bytes()
    os.unlink(photo)  # gone
    not_found(lib.client.get(f"/api/photos/{a}/image", params={"full": 1}))
    assert api(lib, "/api/photos")["photos"][a]["changed"] is True


def test_a_swap_between_check_and_open_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path is resolved, then (a race) something else takes the photo's place before it is opened:
    the checks made on the opened file refuse it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = folder / "a.jpg"
    shutil.copy2(COFFEE, photo)
    st = photo.stat()
    rec = {"key": str(photo), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = IndexedFiles([str(folder)])
    with files.open(rec) as f:
        assert f.read() == COFFEE.read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(COFFEE, outside / "a.jpg")  # the same size and mtime as the photo indexed
    monkeypatch.setattr(os.path, "realpath", lambda p: p)  # resolved before the swap
    photo.unlink()
    photo.symlink_to(outside / "a.jpg")  # the photo itself
    with pytest.raises(ImageMissingError, match="not the file that was indexed"):
        files.open(rec)
    photo.unlink()
    folder.rename(tmp_path / "was-photos")
    folder.symlink_to(outside)  # a folder above it
    with pytest.raises(ImageMissingError, match="not the file that was indexed"):
        files.open(rec)
