"""The photo index: build, incremental update, resume after a kill, atomic swap, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_align import tiny_model

from vsa_search import index as ix
from vsa_search.core.errors import SearchIndexError, UsageError
from vsa_search.core.kv import KV
from vsa_search.index import arrays, layout, sentences
from vsa_search.models.alignment import load_align
from vsa_search.vision.concepts import Concepts
from vsa_search.vision.regions import RegionEncoder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_align(tiny_model(tmp_path_factory.mktemp("m") / "tiny.pt"))


@pytest.fixture(scope="module")
def encoder(tiny_region_encoder) -> RegionEncoder:
    return tiny_region_encoder  # the session's one CNN (conftest)


@pytest.fixture
def photos(tmp_path: Path, sample_photos: list[Path]) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for p in sample_photos[:4]:
        shutil.copy2(p, d / p.name)
    shutil.copy2(sample_photos[4], d / "sub" / sample_photos[4].name)
    return d


def build(roots, model, name, encoder, **kw) -> ix.BuildReport:
    return ix.build_photos(roots, model, name, encoder=encoder, batch_size=2, **kw)


def dump(link: Path) -> dict:
    """Everything an index holds, byte for byte: manifest, every row file, every LMDB record."""
    gen = ix.Location(link).current()
    assert gen is not None
    with KV(gen / layout.META, readonly=True) as kv:
        records = dict(kv.items_bytes(""))
    files = {p.name: p.read_bytes() for p in gen.iterdir() if p.is_file() and p.name != layout.MANIFEST}
    return {"manifest": (gen / layout.MANIFEST).read_text(), "files": files, "lmdb": records}


def assert_same_index(a: Path, b: Path) -> None:
    """Two indexes hold the same photos, paths, hashes, boxes, id ranges and manifest, byte for
    byte; their vectors agree to float noise. (Multi-threaded CPU convolutions round differently
    for different batch compositions, ~1e-5: a resumed build batches photos differently, and
    the int8 code of a value on a rounding boundary may then differ by one step. With one thread
    the two are byte-identical.)"""
    da, db = dump(a), dump(b)
    # The manifest's file checksums cover the vectors, so they differ with the float noise; the rest is equal.
    ma, mb = json.loads(da["manifest"]), json.loads(db["manifest"])
    assert {k: v for k, v in ma.items() if k != "checksums"} == {k: v for k, v in mb.items() if k != "checksums"}
    assert ma["checksums"].keys() == mb["checksums"].keys()
    assert da["lmdb"] == db["lmdb"] and da["files"][layout.BOXES] == db["files"][layout.BOXES]
    with ix.open_index(a) as xa, ix.open_index(b) as xb:
        assert xa.fragments == xb.fragments and (xa.first == xb.first).all() and (xa.count == xb.count).all()
        va, vb = np.concatenate(xa.vectors(range(len(xa)))), np.concatenate(xb.vectors(range(len(xb))))
        np.testing.assert_allclose(va, vb, rtol=0, atol=2 * np.abs(vb).max() / 127 + 1e-3)
        np.testing.assert_allclose(xa.offsets, xb.offsets, rtol=0, atol=1e-3)
        for i, (x, y) in enumerate(zip(xa.concepts_bytes(range(len(xa))), xb.concepts_bytes(range(len(xb))))):
            ca, cb = Concepts.from_bytes(x), Concepts.from_bytes(y)  # probabilities of those features, same noise
            for r in range(len(ca)):
                pa, pb = dict(zip(ca.ids[r].tolist(), ca.probs[r].tolist())), \
                    dict(zip(cb.ids[r].tolist(), cb.probs[r].tolist()))
                for c in set(pa) | set(pb):
                    assert abs(pa.get(c, 0.0) - pb.get(c, 0.0)) < 1e-2, (i, r, c)


def test_build_writes_manifest_faiss_and_lmdb(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    r = build([photos], model, link, encoder)
    assert (r.photos, r.added, r.encoded, r.skipped) == (5, 5, 5, {})
    assert link.is_symlink()
    m = json.loads((link / "manifest.json").read_text())
    assert m["format_version"] == layout.FORMAT_VERSION and m["kind"] == "photos"
    assert m["model"]["fingerprint"] == model.fingerprint and m["index_type"] == "flat"
    assert m["counts"] == {"photos": 5, "regions": r.regions, "skipped": 0}
    assert (link / layout.VECTORS).is_file() and (link / "meta.lmdb" / "data.mdb").is_file()
    assert not (link / layout.FIRST_STAGE).exists()  # flat: the search scans the stored vectors
    with ix.open_index(link) as x:
        assert x.fragments == r.regions and len(x) == 5
        recs = list(x.records())
        assert [rec["key"] for rec in recs] == sorted(rec["key"] for rec in recs)
        assert [rec["first"] for rec in recs] == list(np.cumsum([0] + [rec["count"] for rec in recs[:-1]]))
        rec = recs[0]
        assert {"path", "size", "mtime_ns", "hash", "first", "count"} <= set(rec)
        b = x.boxes(0)
        assert b.shape == (rec["count"], 4) and (b[0][:2] == 0).all()  # region 0 is the full image
        assert x.vectors([0])[0].shape == (rec["count"], model.model.out_dim)
    st = ix.status(link)["photos"]
    assert (st["photos"], st["regions"], st["model"]) == (5, r.regions, model.fingerprint) and st["bytes"] > 0


def test_add_modify_delete_rename_cycle(photos: Path, model, encoder, tmp_path: Path,
                                        sample_photos: list[Path]) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    names = sorted(p.name for p in photos.glob("*.jpg"))
    shutil.copy2(sample_photos[5], photos / "new.jpg")  # add
    with Image.open(photos / names[0]) as im:  # modify: new content, same path
        im.rotate(90, expand=True).save(photos / names[0])
    (photos / names[1]).unlink()  # delete
    (photos / names[2]).rename(photos / "sub" / "renamed.jpg")  # move
    r = build(None, model, link, encoder)  # no PATH: the roots the index was built from
    assert (r.added, r.changed, r.removed, r.moved, r.unchanged) == (1, 1, 1, 1, 2)
    assert r.encoded == 2  # the moved photo was recognised by content, not encoded again
    assert r.photos == 5
    with ix.open_index(link) as x:
        keys = [rec["key"] for rec in x.records()]
    assert str(photos / "sub" / "renamed.jpg") in keys and str(photos / names[1]) not in keys
    # The updated index is the one a clean build of the folder makes.
    clean = tmp_path / "clean"
    build([photos], model, clean, encoder)
    assert_same_index(link, clean)
    # Nothing changed: nothing is encoded or rewritten.
    again = build(None, model, link, encoder)
    assert again.up_to_date and again.encoded == 0 and again.unchanged == 5


def test_touched_file_is_rehashed_not_reencoded(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    p = next(photos.glob("*.jpg"))
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    r = build(None, model, link, encoder)
    assert (r.unchanged, r.changed, r.encoded, r.up_to_date) == (5, 0, 0, False)  # new mtime recorded
    assert build(None, model, link, encoder).up_to_date  # ... so the next build hashes nothing


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from vsa_search import index
from vsa_search.models import alignment
model = alignment.load_align(sys.argv[1])
done = 0
def hook(n):
    global done
    done += n
    if done >= 2:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no finally
index.build_photos([Path(sys.argv[2])], model, sys.argv[3], batch_size=1, on_progress=hook)
"""


@pytest.mark.slow
def test_killed_build_resumes_to_the_clean_index(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    # The killed build runs with this process's environment: CNN features and OpenCV proposals
    # depend (in the last bits) on the thread count, so "equal" holds for equal settings.
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(model.path), str(photos), str(link)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    loc = ix.Location(link)
    assert loc.current() is None and loc.work.is_dir()  # no half index, the encoded photos kept
    with pytest.raises(SearchIndexError, match="no photo index"):
        ix.open_index(link)
    r = build([photos], model, link, encoder)
    assert r.resumed == 2 and r.encoded == 3 and r.photos == 5
    assert not loc.work.exists()
    clean = tmp_path / "clean"
    build([photos], model, clean, encoder)
    assert_same_index(link, clean)


def test_failure_while_writing_keeps_the_old_index(photos: Path, model, encoder, tmp_path: Path,
                                                   sample_photos: list[Path], monkeypatch) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    before = dump(link)
    shutil.copy2(sample_photos[5], photos / "new.jpg")

    def boom(*a, **k):
        raise RuntimeError("killed while writing the index")

    monkeypatch.setattr(arrays, "save", boom)
    with pytest.raises(RuntimeError):
        build(None, model, link, encoder)
    monkeypatch.undo()
    assert dump(link) == before  # readers still see the whole previous index
    r = build(None, model, link, encoder)
    assert r.resumed == 1 and r.encoded == 0 and r.photos == 6
    assert len(ix.Location(link).generations()) == 1  # the unfinished one was cleaned up


def test_reader_keeps_its_generation_during_a_rebuild(photos: Path, model, encoder, tmp_path: Path,
                                                      sample_photos: list[Path]) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    with ix.open_index(link) as old:
        shutil.copy2(sample_photos[5], photos / "new.jpg")
        build(None, model, link, encoder)
        # The old generation was swapped out and deleted, yet an open reader still reads it whole.
        assert len(old) == 5 and len(old.vectors(range(5))) == 5
        d, i = old.search(np.ones((1, model.model.out_dim), np.float32), 3)
        assert (i >= 0).all()
    with ix.open_index(link) as new:
        assert len(new) == 6


def test_one_build_at_a_time(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    with ix.PhotoBuild([photos], model, link, encoder=encoder):
        with pytest.raises(SearchIndexError, match="being built by another process"):
            build([photos], model, link, encoder)


def test_corrupt_and_unreadable_photos_are_skipped_and_listed(photos: Path, model, encoder, tmp_path: Path) -> None:
    (photos / "garbage.jpg").write_bytes(b"not a jpeg at all")
    good = next(photos.glob("*.jpg"))
    (photos / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    (photos / "notes.txt").write_text("not a photo: ignored, not skipped")
    r = build([photos], model, tmp_path / "idx", encoder)
    assert r.photos == 5 and r.added == 5
    assert sorted(Path(p).name for p in r.skipped) == ["garbage.jpg", "truncated.jpg"]
    assert all(why.startswith(str(photos)) for why in r.skipped.values())
    with ix.open_index(tmp_path / "idx") as x:
        assert sorted(Path(p).name for p in x.skipped()) == ["garbage.jpg", "truncated.jpg"]
        assert x.manifest["counts"]["skipped"] == 2


def test_other_model_rebuilds_and_mismatch_is_refused(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    other = load_align(tiny_model(tmp_path / "other.pt", seed=1))
    with ix.open_index(link) as x:
        with pytest.raises(SearchIndexError, match=f"built with model {model.fingerprint}"):
            x.check_model(other)
    with pytest.raises(UsageError, match="drops the vectors of its 5 photos.*--replace"):
        build(None, other, link, encoder)  # another model drops every vector: only when asked
    r = build(None, other, link, encoder, replace=True)
    assert r.model_changed and r.encoded == 5
    with ix.open_index(link) as x:
        x.check_model(other)


def test_old_format_and_wrong_kind_are_clear_errors(photos: Path, model, encoder, tmp_path: Path) -> None:
    link = tmp_path / "idx"
    build([photos], model, link, encoder)
    with pytest.raises(SearchIndexError, match="is a photos index, not a sentences index"):
        ix.FragmentIndex(ix.Location(link), "sentences")
    mf = link / "manifest.json"
    m = json.loads(mf.read_text())
    m["format_version"] = 0
    mf.write_text(json.dumps(m))
    with pytest.raises(SearchIndexError, match=f"index format 0, this version reads {layout.FORMAT_VERSION}; "
                       f"rebuild it with `vsa index build --index {link}`"):
        ix.open_index(link)
    r = build([photos], model, link, encoder)  # a build replaces what it cannot read
    assert r.replaced and "index format 0" in r.replaced and r.encoded == 5
    with ix.open_index(link) as x:
        assert x.manifest["format_version"] == layout.FORMAT_VERSION


def test_missing_paths_index_type_and_remove(photos: Path, model, encoder, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        build([tmp_path / "nope"], model, tmp_path / "idx", encoder)
    with pytest.raises(UsageError, match="give the folders"):
        build(None, model, tmp_path / "idx", encoder)
    with pytest.raises(UsageError, match="unknown index type"):
        build([photos], model, tmp_path / "idx", encoder, index_type="lsh")
    r = build([photos], model, tmp_path / "idx", encoder, index_type="hnsw")
    assert r.index_type == "hnsw"
    r = build(None, model, tmp_path / "idx", encoder, index_type="ivf")  # same photos, new type: rebuilt
    assert r.index_type == "ivf" and not r.up_to_date and r.encoded == 0
    assert ix.remove(tmp_path / "idx") == [str(tmp_path / "idx")]
    assert not any(p.name.startswith(".idx") or p.name == "idx" for p in tmp_path.iterdir())
    with pytest.raises(SearchIndexError, match="no index"):
        ix.remove(tmp_path / "idx")


def test_names_resolve_under_vsa_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    assert ix.resolve("holiday") == tmp_path / "indexes" / "holiday"
    assert ix.resolve(None) == tmp_path / "indexes" / "default"
    assert ix.resolve("holiday", "sentences") == tmp_path / "indexes" / "holiday.sentences"
    assert ix.resolve(str(tmp_path / "x" / "mine")) == tmp_path / "x" / "mine"
    # An index called "default.g" must not mistake "default"'s generations for its own.
    loc = ix.Location(tmp_path / "indexes" / "default.g")
    (tmp_path / "indexes" / ".default.g000001").mkdir(parents=True)
    assert loc.generations() == []


def test_read_sentences_plain_and_captions(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("A dog runs.\n\n  two men in red  \n")
    c = tmp_path / "captions.txt"
    c.write_text("1000268201_693b08cb0e.jpg#0\tA child in a pink dress .\n1000268201_693b08cb0e.jpg#1\tA girl .\n")
    assert sentences.read_sentences([f, c]) == [("s.txt:1", "A dog runs."), ("s.txt:3", "two men in red"),
                                         ("1000268201_693b08cb0e.jpg#0", "A child in a pink dress ."),
                                         ("1000268201_693b08cb0e.jpg#1", "A girl .")]
    with pytest.raises(UsageError, match="no such file"):
        sentences.read_sentences([tmp_path / "missing.txt"])
