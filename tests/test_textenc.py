"""The numpy text encoder (models/textenc.py) equals the torch model's encode_words; its export is
found again only for the same, unchanged model file; a search through it answers exactly as the torch
encoder did and imports neither torch nor timm."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vsa_search import index
from vsa_search.cli import app
from vsa_search.core import paths
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.data.text import tokenize
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models import textenc
from vsa_search.models.alignment import AlignModel, build_model, load_align, save_align

runner = CliRunner()
SHIPPED = paths.shipped_models_dir() / "align.pt"
ROOT = Path(__file__).resolve().parents[1]


def torch_words(loaded, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return loaded.model.encode_words(torch.tensor([ids]), torch.tensor([len(ids)]))[0].float().numpy()


def sentences(vocab: Vocab, n: int, seed: int = 0) -> list[list[str]]:
    """Flickr8k dev-split captions when the data is here, else random sentences of vocabulary words
    (unknown words among them: they are <unk> context for their neighbours)."""
    flickr = paths.flickr8k_root()
    if (flickr / "Flickr8k.token.txt").is_file() and (flickr / "splits" / "Flickr_8k.devImages.txt").is_file():
        dev = set((flickr / "splits" / "Flickr_8k.devImages.txt").read_text().split())
        out = [tokenize(line.split("\t", 1)[1]) for line in (flickr / "Flickr8k.token.txt").read_text().splitlines()
               if "\t" in line and line.split("#")[0] in dev]
        return [t for t in out if t][:n]
    rng = np.random.default_rng(seed)
    words = vocab.itos[len(SPECIALS):] + ["qqzxv", "elephants"]
    return [[words[i] for i in rng.integers(0, len(words), rng.integers(1, 25))] for _ in range(n)]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="needs the shipped weights/align.pt")
def test_numpy_encoder_equals_torch_on_1000_sentences() -> None:
    loaded = load_align(SHIPPED)
    enc = textenc.from_loaded(loaded)
    sents = sentences(loaded.vocab, 1000)
    assert len(sents) == 1000
    worst = 0.0
    for toks in sents:
        ids = loaded.vocab.encode(toks)
        a, b = torch_words(loaded, ids), enc.encode_ids(ids)
        assert a.shape == b.shape == (len(ids), loaded.model.out_dim)
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst < 1e-5, worst


@pytest.mark.parametrize("change", [
    {"rnn": "gru", "word_relu": True, "normalize": False, "pool": "sum"},
    {"rnn": "relu", "arch": "hybrid", "global_members": 3, "normalize": False},
    {"arch": "global"},
    {"arch": "hybrid", "rnn": "gru", "pool": "mean"},
])
def test_every_arch_and_cell_equals_torch(change: dict) -> None:
    torch.manual_seed(1)
    vocab = Vocab(list(SPECIALS) + "a dog on the grass man in red water runs".split())
    cfg = dataclasses.replace(EMBED_PRESETS["tiny"], **change)
    model = build_model(cfg, len(vocab)).eval()
    loaded = type("L", (), {})()  # what from_loaded reads of a LoadedAlign
    loaded.model, loaded.config, loaded.vocab, loaded.fingerprint = model, cfg, vocab, "f" * 16
    loaded.path, loaded.metrics = Path("tiny.pt"), {}
    enc = textenc.from_loaded(loaded)
    for toks in sentences(vocab, 50, seed=2):
        ids = vocab.encode(toks)
        np.testing.assert_allclose(enc.encode_ids(ids), torch_words(loaded, ids), atol=1e-5, rtol=1e-5)


def test_export_round_trip_and_a_changed_model_file_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + "a dog on the grass".split())
    path = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                      tmp_path / "m.pt")
    loaded = load_align(path)
    assert textenc.cached(path, loaded.fingerprint) is None
    textenc.export(loaded)
    again = textenc.cached(path, loaded.fingerprint)
    assert again is not None and again.fingerprint == loaded.fingerprint and again.vocab == vocab
    ids = vocab.encode(["a", "dog", "on", "the", "grass", "qqzxv"])
    np.testing.assert_allclose(again.encode_ids(ids), torch_words(loaded, ids), atol=1e-6)
    assert textenc.cached(path, "0" * 16) is None  # another fingerprint: another model
    os.utime(path, ns=(1, 1))  # the file changed (it may hold other weights now): load it again
    assert textenc.cached(path, loaded.fingerprint) is None
    textenc.cache_path(loaded.fingerprint).write_bytes(b"junk")
    assert textenc.cached(path, loaded.fingerprint) is None  # a damaged export is ignored, not trusted


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> Path:
    """$VSA_HOME with an index of 4 sample photos, built with a tiny (untrained) model."""
    home = tmp_path_factory.mktemp("home")
    (home / "photos").mkdir()
    for p in sample_photos[:4]:
        shutil.copy2(p, home / "photos" / p.name)
    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + "a dog on the grass man in red water cat".split())
    model = save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, REGION_PRESETS["tiny"],
                       home / "tiny.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSA_HOME", str(home))
        index.build_photos([home / "photos"], load_align(model), None, encoder=tiny_region_encoder)
    return home


@pytest.mark.parametrize("bridge", ["--bridge", "--no-bridge"])
def test_cli_json_equals_the_torch_encoders(home: Path, monkeypatch, bridge: str) -> None:
    monkeypatch.setenv("VSA_HOME", str(home))
    query = ["search", "a dog on the red grass near the cats", "-k", "4", "--json", bridge]
    new = runner.invoke(app, query)
    assert new.exit_code == 0, new.stderr
    loaded = load_align(home / "tiny.pt")
    with index.open_index() as x:
        lib_new = index.search_words(x, index.text_model_for(x), query[1], 4, bridge=bridge == "--bridge")
    # The torch encoder in place of the numpy one: the search as it was before.
    monkeypatch.setattr(textenc.TextEncoder, "encode_ids", lambda self, ids: torch_words(loaded, ids))
    with index.open_index() as x:
        lib_old = index.search_words(x, index.text_model_for(x), query[1], 4, bridge=bridge == "--bridge")
    assert [h.key for h in lib_new.hits] == [h.key for h in lib_old.hits]
    np.testing.assert_allclose([h.score for h in lib_new.hits], [h.score for h in lib_old.hits], atol=1e-5)
    old = runner.invoke(app, query)
    assert old.exit_code == 0, old.stderr
    a, b = json.loads(new.stdout), json.loads(old.stdout)
    assert [h["path"] for h in a["hits"]] == [h["path"] for h in b["hits"]] and len(a["hits"]) == 4
    for ha, hb in zip(a["hits"], b["hits"]):
        assert abs(ha["score"] - hb["score"]) <= 1e-4  # printed to 4 decimals: equal up to their rounding
        assert [(w["word"], w["region"]) for w in ha["words"]] == [(w["word"], w["region"]) for w in hb["words"]]


def test_a_search_imports_neither_torch_nor_timm(home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VSA_HOME": str(home), "PYTHONPATH": str(ROOT)}
    code = ("import sys; from vsa_search.cli import main; sys.argv = ['vsa'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    heavy = sorted(m for m in ('torch', 'timm', 'pydantic') if m in sys.modules)\n"
            "    print('HEAVY', heavy, e.code, file=sys.stderr)")
    for args in (["search", "a dog", "--json"], ["search", "a dog", "--no-bridge"], ["search", "a dog"]):
        first = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
        second = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert "HEAVY [] 0" in second.stderr, (args, first.stderr, second.stderr)
        assert second.stdout == first.stdout


def test_one_thread_holds_numpys_blas_to_one_thread_and_restores_it() -> None:
    from vsa_search.core import device

    blas = device._blas_threads()
    if blas is None:
        pytest.skip("numpy is not linked with an OpenBLAS this process can find")
    get, set_ = blas
    before = get()
    set_(2)
    try:
        with device.one_thread():
            assert get() == 1
        assert get() == 2
    finally:
        set_(before)
