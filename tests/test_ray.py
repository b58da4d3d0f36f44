"""Builds on Ray and search over shard sets, on a local Ray cluster these tests start and stop:
a Ray build equals a single-process build, fan-out search equals the merged index's, a worker
killed mid-build is retried. The 12 sample photos and the shipped model; no Ray, no Ray tests
(the shard-set search without Ray and the install hint still run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.cluster import require_ray
from vsa_search.cluster import shards as shard_set
from vsa_search.core import paths
from vsa_search.core.errors import UsageError
from vsa_search.index.query import search_text
from vsa_search.models.alignment import load_align
from vsa_search.vision.regions import RegionEncoder

PHOTOS = paths.REPO_ROOT / "examples" / "photos"
QUERIES = ("a cat", "a cup of coffee", "a man in a red shirt", "the sky at night")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def model():
    return load_align(paths.find_model("align"))


@pytest.fixture(scope="module")
def single(home: Path, model) -> Path:
    """The reference: the sample photos indexed in this process."""
    link = home / "indexes" / "single"
    ix.build_photos([PHOTOS], model, link, encoder=RegionEncoder(model.region_config, "cpu", top=model.top))
    return link


@pytest.fixture(scope="module")
def ray_session():
    """A local 2-CPU Ray cluster for this module (ray.init(num_cpus=2, include_dashboard=False)), stopped after it."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from vsa_search.cluster import connected
    from vsa_search.core.errors import SearchIndexError

    session = connected(num_cpus=2)
    try:
        ray = session.__enter__()
    except SearchIndexError as e:
        # Ray waits a fixed 30 s for its local processes to register; on a machine saturated by
        # other work they cannot, which says nothing about this code.
        pytest.skip(f"a local Ray cluster could not start here: {e}")
    yield ray
    session.__exit__(None, None, None)


@pytest.fixture(scope="module")
def ray_built(ray_session, home: Path) -> tuple[Path, object]:
    from vsa_search.cluster import build as ray_build

    link = home / "indexes" / "photos"
    return link, ray_build.build([PHOTOS], "align", link, workers=2, shards=3)


def _contents(link: Path) -> tuple[dict, list[dict], list[np.ndarray], list[np.ndarray]]:
    with ix.open_index(link) as x:
        return (x.manifest, list(x.records()), x.vectors(range(len(x))), [x.boxes(i) for i in range(len(x))])


def _assert_same_index(a: Path, b: Path) -> None:
    ma, ra, va, ba = _contents(a)
    mb, rb, vb, bb = _contents(b)
    # counts, roots, model, type: nothing says "Ray"; the file checksums cover vectors equal to float noise
    assert {k: v for k, v in ma.items() if k != "checksums"} == {k: v for k, v in mb.items() if k != "checksums"}
    assert ma["checksums"].keys() == mb["checksums"].keys()
    assert ra == rb  # photos, in the same order, with the same region id ranges
    for x, y in zip(va, vb):
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)
    assert all(np.array_equal(x, y) for x, y in zip(ba, bb))


def _assert_same_hits(ra, rb) -> None:
    assert [h.key for h in ra.hits] == [h.key for h in rb.hits] and ra.hits
    np.testing.assert_allclose([h.score for h in ra.hits], [h.score for h in rb.hits], rtol=1e-5, atol=1e-5)
    assert [[m.box for m in h.words] for h in ra.hits] == [[m.box for m in h.words] for h in rb.hits]


def test_ray_build_equals_single_build(ray_built, single: Path, model) -> None:
    link, report = ray_built
    assert (report.photos, report.encoded, report.added, report.workers) == (12, 12, 12, 2)
    assert report.merged and len(report.shards) == 3 and report.retried == 0
    sizes = [len(ix.open_index(Path(s))) for s in report.shards]
    assert sum(sizes) == 12 and sum(1 for n in sizes if n) >= 2  # the photos really were split
    _assert_same_index(link, single)
    with ix.open_index(link) as x, ix.open_index(single) as y:
        for q in QUERIES:
            _assert_same_hits(search_text(x, model, q, k=5), search_text(y, model, q, k=5))


def test_second_ray_build_encodes_nothing(ray_built) -> None:
    from vsa_search.cluster import build as ray_build

    link, _ = ray_built
    gen = ix.Location(link).current()
    again = ray_build.build(None, "align", link, workers=2)  # roots and the 3-shard split come from disk
    assert (again.encoded, again.unchanged, again.up_to_date, again.merged) == (0, 12, True, False)
    assert ix.Location(link).current() == gen


def test_fan_out_search_equals_the_merged_index(ray_built, model) -> None:
    link, report = ray_built
    links = shard_set.resolve_set(str(link))
    assert [str(p) for p in links] == report.shards
    with shard_set.RayShardSet(links) as fan, ix.open_index(link) as merged:
        for q in QUERIES:
            for k in (1, 3, 12):
                _assert_same_hits(fan.search(q, k), search_text(merged, model, q, k))
        with pytest.raises(UsageError, match="no known words"):
            fan.search("xyzzy plugh", 3)  # an actor's error comes back as the one-line error


def test_killed_worker_is_retried_and_the_build_completes(ray_session, home: Path, single: Path) -> None:
    from vsa_search.cluster import build as ray_build

    runs: list[tuple[int, int]] = []
    killed: list[int] = []

    def kill_once(n: int) -> None:
        if not killed:  # a photo of the running shard is stored: kill the worker holding it
            killed.append(runs[-1][1])
            os.kill(killed[0], signal.SIGKILL)

    link = home / "indexes" / "killed"
    report = ray_build.build([PHOTOS], "align", link, workers=1, shards=2, batch_size=1,
                             on_shard_start=lambda s, pid: runs.append((s, pid)), on_progress=kill_once)
    assert killed and report.retried >= 1 and len(runs) == 2 + report.retried
    assert any(pid != killed[0] for _, pid in runs[1:])  # a new actor took over
    assert report.photos == 12
    _assert_same_index(link, single)


def test_more_workers_than_the_cluster_holds_is_refused(ray_session, home: Path) -> None:
    from vsa_search.cluster import build as ray_build

    with pytest.raises(UsageError, match="--workers 3: the Ray cluster has 2 CPUs"):
        ray_build.build([PHOTOS], "align", home / "indexes" / "too-many", workers=3)
    assert not ix.Location(home / "indexes" / "too-many").generations()


def test_local_shard_set_search_and_cli(home: Path, single: Path, model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray: `vsa search --shards NAME` searches the shards in-process and merges."""
    encoder = RegionEncoder(model.region_config, "cpu", top=model.top)
    for i in range(2):
        ix.build_photos([PHOTOS], model, home / "indexes" / f"local.shard-{i}-of-2", encoder=encoder, shard=(i, 2))
    monkeypatch.setenv("VSA_HOME", str(home))
    runner = CliRunner()
    for q in QUERIES[:2]:
        a = runner.invoke(app, ["search", q, "--shards", "local", "-k", "4", "--json"])
        # A shard set is searched by the model alone: compare with the single index without the bridge.
        b = runner.invoke(app, ["search", q, "--index", "single", "-k", "4", "--json", "--no-bridge"])
        assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
        assert json.loads(a.stdout) == json.loads(b.stdout)
    both = "local.shard-0-of-2,local.shard-1-of-2"
    assert shard_set.resolve_set(both) == shard_set.resolve_set("local")
    r = runner.invoke(app, ["search", "a cat", "--shards", "local.shard-0-of-2"])  # half a split
    assert r.exit_code == 2 and "incomplete" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["search", "a cat", "--shards", "nothing"])
    assert r.exit_code == 1 and "no shard set 'nothing'" in r.stderr


def test_without_ray_the_options_say_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(UsageError, match=r"pip install -e '\.\[ray\]'"):
        require_ray()
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    runner = CliRunner()
    for args in (["index", "build", str(PHOTOS), "--ray"], ["search", "a cat", "--shards", "x,y", "--ray"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert r.stderr.strip() == "error: Ray is not installed: pip install -e '.[ray]'"
    r = runner.invoke(app, ["index", "build", str(PHOTOS), "--workers", "2"])
    assert r.exit_code == 2 and "--ray build" in r.stderr
    assert not (tmp_path / "indexes").exists()  # nothing was built


def test_ray_build_is_given_max_megapixels_and_replace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`vsa index build --ray` hands --max-megapixels and --replace to the Ray build (no Ray needed)."""
    from vsa_search.cluster import build as ray_build

    got: dict = {}

    def fake_build(roots, model, name, index_type, **kw):
        got.update(kw)
        return ray_build.RayBuildReport(index=str(name), model="m")

    monkeypatch.setattr(ray_build, "build", fake_build)
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    r = CliRunner().invoke(app, ["index", "build", str(PHOTOS), "--ray", "--max-megapixels", "0.02", "--replace"])
    assert r.exit_code == 0, r.output
    assert (got["max_megapixels"], got["replace"]) == (0.02, True)
    r = CliRunner().invoke(app, ["index", "build", str(PHOTOS), "--ray"])
    assert r.exit_code == 0 and got["replace"] is False, r.output


def test_ray_shard_builds_apply_max_megapixels_and_replace(ray_session, home: Path) -> None:
    """Each shard's build skips photos past --max-megapixels and drops photos only with --replace."""
    from PIL import Image

    from vsa_search.cluster import build as ray_build

    big, small = home / "mp" / "big", home / "mp" / "small"
    big.mkdir(parents=True)
    small.mkdir()
    shutil.copy2(PHOTOS / "astronaut.jpg", big / "astronaut.jpg")
    with Image.open(PHOTOS / "astronaut.jpg") as im:
        im.convert("RGB").resize((100, 100)).save(small / "tiny.jpg")
    link = home / "indexes" / "mp"
    r = ray_build.build([big, small], "align", link, workers=1, shards=1, max_megapixels=0.02)
    assert r.photos == 1 and list(r.skipped) == [str(big / "astronaut.jpg")]
    with pytest.raises(UsageError, match="--replace") as refused:
        ray_build.build([small], "align", link, workers=1, shards=1)
    assert "\n" not in str(refused.value)  # the shard build's own one line, as raised
    r = ray_build.build([small], "align", link, workers=1, shards=1, replace=True)
    assert r.photos == 1 and r.removed == 0 and not r.skipped
    with ix.open_index(link) as x:
        assert [Path(rec["key"]).name for rec in x.records()] == ["tiny.jpg"]


def test_a_ray_build_without_folders_resumes_a_killed_first_build(tmp_path: Path) -> None:
    """Before any shard wrote an index, the folders come from a shard's work area (no Ray needed)."""
    from vsa_search.cluster import build as ray_build
    from vsa_search.core.kv import KV
    from vsa_search.index.layout import _WORK_META

    link = tmp_path / "photos"
    with pytest.raises(UsageError, match="give the folders to index"):
        ray_build._roots(None, link)
    with KV(ix.Location(shard_set.shard_link(link, 1, 2)).work) as kv:  # what a killed shard build leaves
        kv.put_json(_WORK_META, {"model": "m", "format_version": 1, "roots": [str(PHOTOS)]})
    assert ray_build._roots(None, link) == [PHOTOS]
