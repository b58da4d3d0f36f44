"""Sharded index builds: `--shard i/n` slices, `merge` equals a single build; memory-budget type choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.cli.index import parse_shard
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.core.errors import SearchIndexError, UsageError
from vsa_search.core.kv import KV
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.index import faiss_types, layout
from vsa_search.index.query import PER_WORD_APPROX, search_text
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.vision.regions import RegionEncoder

WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "girl", "water", "two", "is", "running"]
N = 3  # shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path]) -> dict:
    """Six real photos (one in a sub-folder), a tiny random-weight model, one CNN."""
    d = tmp_path_factory.mktemp("shards")
    photos = d / "photos"
    (photos / "sub").mkdir(parents=True)
    for p in sample_photos[:5]:
        shutil.copy2(p, photos / p.name)
    shutil.copy2(sample_photos[5], photos / "sub" / sample_photos[5].name)
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + WORDS)
    model_path = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                            d / "tiny.pt")
    return {"dir": d, "photos": photos, "model": load_align(model_path), "model_path": model_path,
            "encoder": RegionEncoder(REGION_PRESETS["tiny"], "cpu")}


def _build(s: dict, name: Path, **kw) -> ix.BuildReport:
    return ix.build_photos([s["photos"]], s["model"], name, encoder=s["encoder"], batch_size=3, **kw)


def _dump(link: Path) -> dict:
    gen = ix.Location(link).current()
    with KV(gen / layout.META, readonly=True) as kv:
        records = dict(kv.items_bytes(""))
    return {"manifest": json.loads((gen / layout.MANIFEST).read_text()), "faiss": (gen / layout.VECTORS).read_bytes(),
            "lmdb": records}


def test_shard_split_is_a_stable_partition(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    paths = [str(roots[0] / f"x{i}.jpg") for i in range(40)] + [str(roots[1] / "d" / f"y{i}.jpg") for i in range(40)]
    got = [ix.shard_of(p, roots, 4) for p in paths]
    assert sorted(set(got)) == [0, 1, 2, 3] and all(got.count(i) >= 5 for i in range(4))  # spread out
    # The slice depends on the path under its root only: the same collection mounted elsewhere splits alike.
    moved = [Path("/mnt/other/a"), Path("/mnt/other/b")]
    assert got == [ix.shard_of(p.replace(str(tmp_path), "/mnt/other"), moved, 4) for p in paths]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


@pytest.mark.parametrize("index_type", ["auto", "ivf"])
def test_merged_shards_equal_a_single_build(setup: dict, index_type: str) -> None:
    d = setup["dir"] / index_type
    single = _build(setup, d / "single", index_type=index_type)
    shards = [_build(setup, d / f"s{i}", index_type=index_type, shard=(i, N)) for i in range(N)]
    assert sum(r.photos for r in shards) == single.photos == 6
    assert sum(1 for r in shards if r.photos) >= 2  # the photos really were split
    assert sum(r.encoded for r in shards) == 6  # each photo went through the CNN in one shard only
    report = ix.merge([d / f"s{i}" for i in reversed(range(N))], d / "merged", index_type)  # any order
    assert (report.photos, report.regions) == (single.photos, single.regions)
    a, b = _dump(d / "single"), _dump(d / "merged")
    assert a["manifest"] == b["manifest"]  # roots, counts, type, model: nothing says "merged"
    assert a["faiss"] == b["faiss"]
    assert a["lmdb"] == b["lmdb"]  # item records, region id ranges, vectors, boxes: renumbered alike
    with ix.open_index(d / "single") as x, ix.open_index(d / "merged") as y:
        for text in ("a dog on the grass", "two girl in red water", "man running"):
            ra = search_text(x, setup["model"], text, k=6)
            rb = search_text(y, setup["model"], text, k=6)
            assert ra.to_dict() == rb.to_dict() and len(ra.hits) == 6


def test_merge_refuses_incomplete_repeated_or_foreign_parts(setup: dict) -> None:
    d = setup["dir"] / "errors"
    for i in range(2):
        _build(setup, d / f"s{i}", shard=(i, 2))
    with pytest.raises(UsageError, match="1/2 missing"):
        ix.merge([d / "s0"], d / "m")
    with pytest.raises(UsageError, match="given twice"):
        ix.merge([d / "s0", d / "s0", d / "s1"], d / "m")
    with pytest.raises(UsageError, match="cannot also be one of its parts"):
        ix.merge([d / "s0", d / "s1"], d / "s0")
    _build(setup, d / "whole")
    with pytest.raises(SearchIndexError, match="in two of the parts"):
        ix.merge([d / "s0", d / "s1", d / "whole"], d / "m")
    torch.manual_seed(1)
    vocab = Vocab(list(SPECIALS) + WORDS)
    other = load_align(save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab,
                                  REGION_PRESETS["tiny"], d / "other.pt"))
    ix.build_photos([setup["photos"]], other, d / "o1", encoder=setup["encoder"], shard=(1, 2))
    with pytest.raises(SearchIndexError, match="same --model"):
        ix.merge([d / "s0", d / "o1"], d / "m")
    assert not (d / "m").exists()  # nothing half-written


def test_cli_build_shard_and_merge(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(setup["dir"] / "home"))
    runner = CliRunner()
    base = ["index", "build", str(setup["photos"]), "--model", str(setup["model_path"]), "--json"]
    for i in range(2):
        r = runner.invoke(app, [*base, "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["index"].endswith(f"default.shard-{i}-of-2")  # never the full default index
    r = runner.invoke(app, ["index", "merge", "default.shard-0-of-2", "default.shard-1-of-2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["photos"] == 6
    r = runner.invoke(app, [*base, "--shard", "2/2"])
    assert r.exit_code == 2 and "--shard 2/2" in r.stderr and "Traceback" not in r.output


def test_memory_budget_picks_ivfpq_and_pq_searches() -> None:
    n, dim = 12_000, 64
    assert ix.choose_for_memory("auto", n, dim, None) == "pq"  # enough fragments to train PQ codes
    assert ix.choose_for_memory("auto", n, dim, n * dim) == "pq"  # within budget: 8 bytes a fragment
    assert ix.choose_for_memory("auto", n, dim, n * 4) == "ivfpq"  # PQ codes of 4 bytes instead
    assert ix.choose_for_memory("flat", n, dim, 1) == "flat"  # an explicit type is kept
    assert ix.choose_for_memory("auto", 1000, dim, 1) == "flat"  # too few to train PQ: no PQ
    assert ix.memory_bytes("ivfpq", n, dim) < ix.memory_bytes("ivf", n, dim) / 8
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, dim)).astype(np.float32)
    x = (centers[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float16)
    index, kind, params = faiss_types.make_faiss(x, "ivfpq")
    assert kind == "ivfpq" and index.ntotal == n and params["pq_m"] == faiss_types.pq_layout(dim)[0]
    assert dim % params["pq_m"] == 0 and ix.memory_bytes("ivfpq", n, dim) < n * dim  # codes, not floats
    index.nprobe = params["nprobe"]
    q = x[:20].astype(np.float32)
    _, ids = index.search(q, PER_WORD_APPROX)  # the index holds x - centre: q.centre shifts no ranking
    exact = np.argsort(-(q @ x.astype(np.float32).T), axis=1)[:, :10]
    recall = np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(ids, exact)])
    reranked = [a[np.argsort(-(x[a].astype(np.float32) @ qq))][:10] for a, qq in zip(ids, q)]
    recall_rr = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(reranked, exact)])
    assert recall > 0.1 and recall_rr > 0.9, (recall, recall_rr)  # index/query.py re-ranks its 256 candidates exactly
