"""`vsa caption` on the CPU runs the numpy models (captioning/load.py): a new process imports neither
torch, timm nor torchvision once the exports are in the cache, and it prints what the torch models
printed for the example photos (tests/data/caption-examples.json, written by the torch path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "photos"
PINNED = json.loads((ROOT / "tests" / "data" / "caption-examples.json").read_text())
CODE = ("import sys; from vsa_search.cli import main; sys.argv = ['vsa'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n"
        "    heavy = sorted(m for m in ('torch', 'timm', 'torchvision', 'pydantic') if m in sys.modules)\n"
        "    print('HEAVY', heavy, e.code, file=sys.stderr)")


def vsa(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSA_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CODE, *args], env=env, cwd=home, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty $VSA_HOME (the shipped models, no cache) after one caption run, which made the exports."""
    home = tmp_path_factory.mktemp("home")
    first = vsa(home, "caption", str(EXAMPLES / "grass.jpg"), "--json")
    assert "HEAVY" in first.stderr and " 0" in first.stderr, first.stderr
    assert sorted(p.name.split("-")[1] for p in (home / "cache" / "exports").iterdir()) == \
        ["backbone", "caption2", "rerank"]
    home.joinpath("first.json").write_text(first.stdout)
    return home


def test_a_cold_caption_imports_neither_torch_nor_timm(home: Path) -> None:
    got = vsa(home, "caption", str(EXAMPLES / "grass.jpg"), "--json")
    assert "HEAVY [] 0" in got.stderr, got.stderr
    assert got.stdout == home.joinpath("first.json").read_text()  # the run that exported answered the same
    plain = vsa(home, "caption", str(EXAMPLES / "grass.jpg"))
    assert "HEAVY [] 0" in plain.stderr, plain.stderr


def test_the_example_photos_get_the_captions_the_torch_models_gave(home: Path) -> None:
    got = vsa(home, "caption", *sorted(str(p) for p in EXAMPLES.glob("*.jpg")), "--json")
    assert "HEAVY [] 0" in got.stderr, got.stderr
    rows = {Path(r["photo"]).name: r for r in json.loads(got.stdout)}
    assert sorted(rows) == sorted(PINNED)
    for name, want in PINNED.items():
        r = rows[name]
        assert r["caption"] == want["caption"], name
        # float32 in another library: the last printed digit may differ (grass.jpg: torch -3.5707498,
        # numpy -3.5707505), nothing more
        assert r["logprob"] == pytest.approx(want["logprob"], abs=1.5e-4), name
        assert [[c["name"], c["region"]] for c in r["concepts"]] == [[n, reg] for n, _, reg in want["concepts"]]
        assert [c["prob"] for c in r["concepts"]] == pytest.approx([p for _, p, _ in want["concepts"]], abs=1e-3)


def test_the_text_output_is_the_torch_models(home: Path) -> None:
    photos = [EXAMPLES / n for n in ("coffee.jpg", "horse.jpg")]
    got = vsa(home, "caption", *map(str, photos), "--device", "cpu")
    assert [line.split() for line in got.stdout.splitlines()] == \
        [f"{p} {PINNED[p.name]['caption']} ({PINNED[p.name]['logprob']:.2f})".split() for p in photos]


def test_an_ensemble_with_an_attention_member_captions_without_torch(home: Path, caption_vocab) -> None:
    import dataclasses

    import numpy as np
    import torch

    from vsa_search.captioning.rerank import best_candidate, default_weight
    from vsa_search.core.config import CAPTION_PRESETS, RegionConfig
    from vsa_search.models import rerank_np
    from vsa_search.models.attention import AttendCaptioner
    from vsa_search.models.beam import generate_candidates
    from vsa_search.models.captioner import (
        Captioner,
        ensemble_captioners,
        load_caption,
        photo_input,
        save_caption,
    )
    from vsa_search.vision.cnn import NumpyRegionEncoder

    att_cfg = CAPTION_PRESETS["attend-tiny"]
    lstm_cfg = dataclasses.replace(att_cfg, cell="lstm")
    torch.manual_seed(0)
    members = []
    for j, m in enumerate([Captioner(lstm_cfg, len(caption_vocab)), AttendCaptioner(att_cfg, len(caption_vocab))]):
        with torch.no_grad():  # random weights all through: the attention parts start at zero
            for p in m.parameters():
                p.normal_(0, 0.3)
        members.append(load_caption(save_caption(m, caption_vocab, RegionConfig(), home / f"m{j}.pt")))
    path = save_caption(ensemble_captioners(members), caption_vocab, RegionConfig(), home / "mixed.pt")
    photos = [str(EXAMPLES / n) for n in ("coffee.jpg", "horse.jpg")]
    first = vsa(home, "caption", *photos, "--model", str(path), "--json")  # exports it, with torch
    assert "HEAVY" in first.stderr and " 0" in first.stderr, first.stderr
    got = vsa(home, "caption", *photos, "--model", str(path), "--json")
    assert "HEAVY [] 0" in got.stderr, got.stderr
    assert got.stdout == first.stdout
    # What the torch generator and beam search make of the same (numpy CNN) features, re-ranked the same way.
    loaded, enc = load_caption(path), NumpyRegionEncoder(RegionConfig())
    align = rerank_np.load_align(ROOT / "weights" / "align.pt")
    for photo, row in zip(photos, json.loads(got.stdout), strict=True):
        feats = enc.encode_photo(Path(photo))
        cands = generate_candidates(loaded, photo_input(feats, loaded.config)[None], beam=7)[0]
        want = best_candidate(cands, caption_vocab, align, np.asarray(feats.features), default_weight(loaded))
        assert row["caption"] == " ".join(caption_vocab.decode(want.tokens))
        assert row["logprob"] == pytest.approx(want.logprob, abs=1e-4)


def test_a_reranker_of_a_fine_tuned_top_captions_without_torch(home: Path, caption_vocab) -> None:
    """The re-ranker's top runs in the numpy CNN beside ImageNet's; the captions are the torch path's, and the
    generator's features ImageNet's (weight 0 gives the caption without a re-ranker)."""
    from tiny_align import tiny_captioner, tiny_top_model

    from vsa_search.captioning import caption_photos
    from vsa_search.models.alignment import load_align
    from vsa_search.models.captioner import load_caption

    cap = tiny_captioner(home / "tiny-cap.pt", caption_vocab)
    align = tiny_top_model(home / "top.pt", vocab=caption_vocab)
    photos = [str(EXAMPLES / n) for n in ("coffee.jpg", "horse.jpg", "grass.jpg")]
    args = ["caption", *photos, "--model", str(cap), "--device", "cpu", "--json"]
    first = vsa(home, *args, "--rerank", str(align), "--rerank-weight", "1000")  # exports them, with torch
    assert "HEAVY" in first.stderr and " 0" in first.stderr, first.stderr
    got = vsa(home, *args, "--rerank", str(align), "--rerank-weight", "1000")
    assert "HEAVY [] 0" in got.stderr, got.stderr
    assert got.stdout == first.stdout
    want = caption_photos(list(map(Path, photos)), load_caption(cap), rerank_with=load_align(align),
                          rerank_weight=1000.0)
    rows = json.loads(got.stdout)
    assert [r["caption"] for r in rows] == [w.caption for w in want]
    # float32 in another library, over sentences of a random generator (log P down to -230)
    assert [r["logprob"] for r in rows] == pytest.approx([w.logprob for w in want], rel=2e-5)
    zero = vsa(home, *args, "--rerank", str(align), "--rerank-weight", "0")
    plain = vsa(home, *args, "--rerank", "none")
    assert "HEAVY [] 0" in zero.stderr and "HEAVY [] 0" in plain.stderr, zero.stderr + plain.stderr
    assert zero.stdout == plain.stdout and zero.stdout != got.stdout


def test_the_device_decides_which_models(monkeypatch) -> None:
    from vsa_search.captioning.load import load_captioning
    from vsa_search.core import device, paths
    from vsa_search.models.captioner import LoadedCaptioner
    from vsa_search.models.decode_np import NumpyCaptioner
    from vsa_search.models.rerank_np import NumpyAlign
    from vsa_search.vision.cnn import NumpyRegionEncoder
    from vsa_search.vision.regions import RegionEncoder

    assert device.on_cpu("cpu") and not device.on_cpu("cuda") and not device.on_cpu("cuda:1")
    monkeypatch.setattr(device, "_GPU_NODES", ())  # as on a machine without a GPU driver: no torch needed
    assert device.on_cpu(None)
    model = paths.find_model("caption-ensemble")
    cap, align, enc = load_captioning(model, None, "cpu")
    assert isinstance(cap, NumpyCaptioner) and isinstance(align, NumpyAlign) and isinstance(enc, NumpyRegionEncoder)
    assert load_captioning(model, "none", "cpu")[1] is None
    cap, align, enc = load_captioning(model, None, "cpu", concepts=True)  # the constrained beam is torch's
    assert isinstance(cap, LoadedCaptioner) and align is None and isinstance(enc, RegionEncoder)
