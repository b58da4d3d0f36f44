"""Faults: a long query, a full or read-only disk, a damaged index or resume area, a build that
would drop photos, a folder that went away. Each ends in one clear error (one line and a non-zero
exit at the command line) and loses nothing. The faults that held from the start are tested in
tests/test_index.py: a build killed with SIGKILL resumes to the clean index, a failure while
writing keeps the old index, a reader keeps its generation during a rebuild, and a second build
of the same index is refused while one runs."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tiny_align import tiny_model
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.core.errors import QueryError, SearchIndexError, UsageError
from vsa_search.index import arrays, layout
from vsa_search.index import photos as photo_builds
from vsa_search.models import encode
from vsa_search.models.alignment import load_align
from vsa_search.vision.regions import RegionEncoder

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_align(tiny_model(tmp_path_factory.mktemp("m") / "tiny.pt"))


@pytest.fixture(scope="module")
def encoder(tiny_region_encoder) -> RegionEncoder:
    return tiny_region_encoder  # the session's one CNN (conftest)


@pytest.fixture
def photos(tmp_path: Path, sample_photos: list[Path]) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for p in sample_photos[:4]:
        shutil.copy2(p, d / p.name)
    return d


def build(roots, model, link, encoder, **kw) -> ix.BuildReport:
    return ix.build_photos(roots, model, link, encoder=encoder, batch_size=2, **kw)


def snapshot(link: Path) -> dict[str, bytes]:
    """The current generation's files, byte for byte (LMDB's lock file aside)."""
    gen = ix.Location(link).current()
    assert gen is not None
    return {str(p.relative_to(gen)): p.read_bytes() for p in sorted(gen.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def leftovers(link: Path) -> list[str]:
    return sorted(p.name for p in link.parent.iterdir() if p.name.endswith(".tmp"))


def one_error_line(res, code: int = 1) -> str:
    assert res.exit_code == code, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# --------------------------------------------------------------------------- a long query


def test_a_long_query_is_refused_with_its_limit(tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", " ".join(["dog"] * 1500), "--index", str(tmp_path / "none")])
    line = one_error_line(res, 2)
    assert "1500 words" in line and f"at most {encode.MAX_QUERY_WORDS}" in line
    res = runner.invoke(app, ["align", "photo.jpg", " ".join(["dog"] * 1500)])
    assert "at most" in one_error_line(res, 2)


def test_query_vectors_that_overflow_are_an_error_not_an_empty_answer(model, monkeypatch) -> None:
    from vsa_search.models.textenc import TextEncoder

    def overflow(self, ids):
        return np.full((len(ids), model.model.out_dim), np.nan, np.float32)

    monkeypatch.setattr(TextEncoder, "encode_ids", overflow)
    with pytest.raises(QueryError, match="overflow"):
        encode.query_vectors(model, "a dog on the grass")


# --------------------------------------------------------------------------- a full or read-only disk


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, r"no space left .*it needs about [0-9.]+ MB"),
                                           (errno.EROFS, "cannot write there \\(Read-only file system\\)")])
def test_a_failed_write_removes_the_partial_generation_and_keeps_the_old(photos: Path, model, encoder,
                                                                         tmp_path: Path, sample_photos: list[Path],
                                                                         monkeypatch, code: int,
                                                                         message: str) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    before = snapshot(link)
    shutil.copy2(sample_photos[5], photos / "new.jpg")

    def fail(path: Path, a) -> None:
        Path(path).write_bytes(b"\0" * 4096)  # part of the file made it to disk
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(arrays, "save", fail)
    with pytest.raises(SearchIndexError, match=message):
        build(None, model, link, encoder)
    assert leftovers(link) == [] and snapshot(link) == before
    monkeypatch.undo()
    r = build(None, model, link, encoder)  # the photo encoded before the failure is not encoded again
    assert (r.photos, r.resumed, r.encoded) == (5, 1, 0)


def test_too_little_space_is_refused_before_encoding(photos: Path, model, encoder, tmp_path: Path,
                                                     monkeypatch) -> None:
    link = tmp_path / "idx"
    monkeypatch.setattr(photo_builds.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
    with pytest.raises(SearchIndexError, match=r"needs about [0-9.]+ MB, 0.0 MB are free"):
        build([photos], model, link, encoder)
    assert ix.Location(link).current() is None and leftovers(link) == []


FSIZE_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["vsa"] + sys.argv[2:]
from vsa_search.cli import main
main()
"""


@pytest.mark.slow
def test_a_file_size_limit_in_a_real_process_is_one_line(photos: Path, model, encoder, tmp_path: Path,
                                                         sample_photos: list[Path]) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    before = snapshot(link)
    for p in sample_photos[4:8]:
        shutil.copy2(p, photos / p.name)
    limit = max(len(b) for b in before.values()) // 2  # the new generation cannot be written whole
    proc = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(limit), "index", "build", "--index", str(link),
                           "--model", str(model.path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # A write past the limit fails with EFBIG, which LMDB reports as a short write (EIO).
    assert len(lines) == 1 and "no space left" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "previous index is kept" in lines[0]
    assert leftovers(link) == [] and snapshot(link) == before
    r = build(None, model, link, encoder)
    assert r.photos == 8


def test_a_read_only_index_folder_is_one_line(photos: Path, model, tmp_path: Path, monkeypatch) -> None:
    # As root, chmod does not stop writes: the file system's answer is injected where the lock is made.
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(layout.os, "open", read_only)
    res = runner.invoke(app, ["index", "build", str(photos), "--index", str(tmp_path / "idx"),
                              "--model", str(model.path)])
    assert "cannot write there (Read-only file system)" in one_error_line(res)


# --------------------------------------------------------------------------- a damaged index


@pytest.mark.parametrize("victim", [layout.VECTORS, f"{layout.META}/data.mdb"])
def test_a_truncated_index_is_detected_and_rebuilt(photos: Path, model, encoder, tmp_path: Path,
                                                   victim: str) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    f = ix.Location(link).current() / victim
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(SearchIndexError, match="is damaged"):
        ix.open_index(link)
    assert "is damaged" in ix.status(link)["photos"]["damaged"]
    for args in (["index", "status", "--index", str(link)], ["search", "a dog", "--index", str(link)]):
        assert "vsa index build" in one_error_line(runner.invoke(app, args))
    r = build(None, model, link, encoder)  # no PATH: the folders come from the damaged index's manifest
    assert r.replaced and "damaged" in r.replaced and (r.photos, r.encoded) == (4, 4)
    with ix.open_index(link) as x:
        assert len(x) == 4


def test_verify_finds_a_changed_byte(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    assert ix.status(link, verify=True)["photos"]["verified"] is True
    f = ix.Location(link).current() / layout.VECTORS
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    f.write_bytes(bytes(data))
    assert "checksum" in ix.status(link, verify=True)["photos"]["damaged"]
    line = one_error_line(runner.invoke(app, ["index", "status", "--verify", "--index", str(link)]))
    assert f"{layout.VECTORS}: checksum" in line
    assert line.endswith(f"`vsa index remove --index {link}`, then `vsa index build PATH --index {link}`")


def test_a_truncated_resume_area_is_discarded(photos: Path, model, encoder, tmp_path: Path, monkeypatch) -> None:
    link = tmp_path / "idx"
    calls = []
    real = photo_builds.encode_regions

    def dies_at_the_third(loaded, feats):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("stopped")  # as a crash would, after the first batch of two was saved
        return real(loaded, feats)

    monkeypatch.setattr(photo_builds, "encode_regions", dies_at_the_third)
    with pytest.raises(RuntimeError, match="stopped"):
        build([photos], model, link, encoder)
    monkeypatch.undo()
    work = ix.Location(link).work / "data.mdb"
    assert work.is_file()
    os.truncate(work, 8192)  # the meta pages survive, the data pages they point at do not
    r = build([photos], model, link, encoder)
    assert r.work_discarded and "cut short" in r.work_discarded
    assert (r.photos, r.resumed, r.encoded) == (4, 0, 4)
    clean = tmp_path / "clean"
    build([photos], model, clean, encoder)
    with ix.open_index(link) as a, ix.open_index(clean) as b:
        assert [x["hash"] for x in a.records()] == [x["hash"] for x in b.records()]
        np.testing.assert_allclose(np.concatenate(a.vectors(range(4))).astype(np.float32),
                                   np.concatenate(b.vectors(range(4))).astype(np.float32), atol=1e-2)


# --------------------------------------------------------------------------- options and dropped photos


def test_max_megapixels_is_an_option_of_index_build(tmp_path: Path, model, sample_photos: list[Path]) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy2(sample_photos[0], d / "big.jpg")
    with Image.open(sample_photos[0]) as im:
        im.convert("RGB").resize((100, 100)).save(d / "small.jpg")
    link = tmp_path / "idx"
    res = runner.invoke(app, ["index", "build", str(d), "--index", str(link), "--model", str(model.path),
                              "--max-megapixels", "0.02"])
    assert res.exit_code == 0, res.stderr
    assert "big.jpg" in res.stderr and "--max-megapixels" in res.stderr and "small.jpg" not in res.stderr
    with ix.open_index(link) as x:
        assert [Path(r["key"]).name for r in x.records()] == ["small.jpg"]
    res = runner.invoke(app, ["index", "build", str(d), "--index", str(link), "--max-megapixels", "0"])
    assert "--max-megapixels" in one_error_line(res, 2)


def test_other_folders_need_replace(photos: Path, model, encoder, tmp_path: Path, sample_photos: list[Path]) -> None:
    link = tmp_path / "idx"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(sample_photos[6], other / sample_photos[6].name)
    build([photos], model, link, encoder)
    with pytest.raises(UsageError, match=f"also holds the photos under {photos}.*--replace"):
        build([other], model, link, encoder)
    with ix.open_index(link) as x:
        assert len(x) == 4
    r = build([photos, other], model, link, encoder)  # a folder added: nothing dropped, no question
    assert (r.photos, r.removed) == (5, 0)
    r = build([other], model, link, encoder, replace=True)
    assert (r.photos, r.removed) == (1, 4)


@pytest.mark.parametrize("how", ["gone", "empty"])
def test_an_unreachable_folder_keeps_its_photos(photos: Path, model, encoder, tmp_path: Path,
                                                sample_photos: list[Path], how: str) -> None:
    link = tmp_path / "idx"
    drive = tmp_path / "drive"
    drive.mkdir()
    for p in sample_photos[5:7]:
        shutil.copy2(p, drive / p.name)
    build([photos, drive], model, link, encoder)
    shutil.rmtree(drive)
    if how == "empty":
        drive.mkdir()  # an unmounted drive leaves its empty mount point
    r = build(None, model, link, encoder)
    assert r.unreachable == {str(drive): 2} and (r.photos, r.removed) == (6, 0)
    res = runner.invoke(app, ["index", "build", "--index", str(link), "--model", str(model.path)])
    assert res.exit_code == 0 and f"{drive}: unreachable" in res.stderr, res.stderr


# --------------------------------------------------------------------------- what a failed build leaves


def _fail_at_the_third_encode(monkeypatch) -> None:
    """Encoding fails at the third photo, as a crash would, after the first batch of two was saved."""
    calls = []
    real = photo_builds.encode_regions

    def dies(loaded, feats):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("stopped")
        return real(loaded, feats)

    monkeypatch.setattr(photo_builds, "encode_regions", dies)


def test_status_of_an_interrupted_first_build_prints_a_command_that_resumes_it(photos: Path, model, encoder,
                                                                               tmp_path: Path, monkeypatch) -> None:
    link = tmp_path / "idx"
    with monkeypatch.context() as m:
        _fail_at_the_third_encode(m)
        with pytest.raises(RuntimeError, match="stopped"):
            build([photos], model, link, encoder)
    loc = ix.Location(link)
    assert loc.current() is None and loc.work.is_dir()  # no index yet, two photos' vectors kept
    res = runner.invoke(app, ["index", "status", "--index", str(link)])
    assert res.exit_code == 0, res.stderr
    cmd = re.search(r"run `(vsa index build[^`]*)` to finish it", res.stdout)
    assert cmd, res.stdout
    args = shlex.split(cmd.group(1))[1:]
    assert args == ["index", "build", "--index", str(link), "--model", str(Path(model.path).resolve())]
    res = runner.invoke(app, args + ["--json"])  # no PATH: the folders come from the interrupted build
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert (r["photos"], r["resumed"], r["encoded"]) == (4, 2, 2)
    assert ix.status(link)["photos"]["roots"] == [str(photos)] and not loc.work.exists()


def test_a_failed_build_leaves_no_lock_and_no_empty_work_area(photos: Path, model, encoder, tmp_path: Path,
                                                              monkeypatch) -> None:
    mine = tmp_path / "mine"  # a user's own folder that --index points into
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    link = mine / "idx"
    with monkeypatch.context() as m:  # fails after planning, before encoding anything
        m.setattr(photo_builds.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000))
        with pytest.raises(SearchIndexError, match="not enough space"):
            build([photos], model, link, encoder)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["index", "build", str(empty), "--index", str(link), "--model", str(model.path)])
    assert "no photos" in one_error_line(res, 2)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with monkeypatch.context() as m:  # fails with vectors saved: they stay for the next build, the lock goes
        _fail_at_the_third_encode(m)
        with pytest.raises(RuntimeError, match="stopped"):
            build([photos], model, link, encoder)
    assert sorted(p.name for p in mine.iterdir()) == [".idx.work", "notes.txt"]
    r = build(None, model, link, encoder)
    assert (r.photos, r.resumed, r.encoded) == (4, 2, 2)
    assert sorted(p.name for p in mine.iterdir()) == [".idx.g000001", "idx", "notes.txt"]
