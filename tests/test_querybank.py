"""Querybank normalisation: offsets against a direct computation, the bank inside the model file, the
index's scores (model score less the offset, kept across rebuilds and in the sentence index), and
`vsa eval recall` reporting the model with and without it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_align import TINY, WORDS, tiny_model
from typer.testing import CliRunner

from vsa_search import index as ix
from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS
from vsa_search.core.errors import ModelError
from vsa_search.data.vocab import pad_ids
from vsa_search.index import query, sentences
from vsa_search.models import checkpoint
from vsa_search.models.alignment import AlignModel, load_align, save_align
from vsa_search.models.encode import photo_offset, query_vectors
from vsa_search.models.querybank import (
    QueryBank,
    dequantize,
    pack4,
    photo_offsets,
    quantize,
    sentence_offsets,
    stored,
    unpack4,
)
from vsa_search.models.score import item_scores, score
from vsa_search.vision.images import load

BANK_SENTENCES = ["a dog on the grass", "two man in red", "a girl is running in the water", "the dog"]


def _bank(vocab, sample_photos: list[Path], encoder) -> QueryBank:
    ids, lengths = pad_ids([vocab.encode_text(s) for s in BANK_SENTENCES])
    feats = [encoder.encode_one(load(p)) for p in sample_photos[5:8]]
    r = max(len(f.features) for f in feats)
    pf = torch.zeros(len(feats), r, feats[0].features.shape[1])
    pm = torch.zeros(len(feats), r, dtype=torch.bool)
    for i, f in enumerate(feats):
        pf[i, : len(f.features)] = torch.from_numpy(f.features)
        pm[i, : len(f.features)] = True
    return QueryBank(5.0, 0.5, ids, lengths, pf.half().float(), pm)


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> Path:
    """The tiny model with a bank of 4 sentences and 3 real photos (β 5, weight 0.5)."""
    d = tmp_path_factory.mktemp("qb")
    plain = load_align(tiny_model(d / "plain.pt"))
    return save_align(plain.model, plain.vocab, TINY, d / "banked.pt",
                      querybank=_bank(plain.vocab, sample_photos, tiny_region_encoder))


@pytest.fixture(scope="module")
def banked_hybrid(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> Path:
    """The same with a hybrid model of two global members (a global term the same for every region)."""
    d = tmp_path_factory.mktemp("qbh")
    torch.manual_seed(1)
    vocab = load_align(tiny_model(d / "plain.pt")).vocab
    cfg = dataclasses.replace(EMBED_PRESETS["tiny"], arch="hybrid", global_members=2)
    return save_align(AlignModel(cfg, len(vocab)).eval(), vocab, TINY, d / "hybrid.pt",
                      querybank=_bank(vocab, sample_photos, tiny_region_encoder))


@torch.no_grad()
@pytest.mark.parametrize("which", ["banked", "banked_hybrid"])
def test_offsets_match_a_direct_computation(which: str, request: pytest.FixtureRequest) -> None:
    m = load_align(request.getfixturevalue(which))
    bank, model = m.querybank, m.model
    assert bank is not None
    g = torch.Generator().manual_seed(0)
    v = model.encode_regions(torch.randn(3, TINY.max_regions, bank.photo_feats.shape[2], generator=g))
    mask = torch.ones(v.shape[:2], dtype=torch.bool)
    mask[1, 3:] = False  # a photo with fewer regions than the others
    got = photo_offsets(model, bank, v, mask)
    for i in range(3):
        per = []
        for k in range(len(bank.sent_ids)):
            n = int(bank.sent_lengths[k])
            s = model.encode_words(bank.sent_ids[k : k + 1, :n], bank.sent_lengths[k : k + 1])
            per.append(float(score(v[i : i + 1], mask[i : i + 1], s, torch.ones(1, n, dtype=torch.bool))))
        want = 0.5 / 5.0 * torch.logsumexp(5.0 * torch.tensor(per), 0)
        assert float(got[i]) == pytest.approx(float(want), abs=1e-5)
    ids, lengths = pad_ids([m.vocab.encode_text("a red dog running")])
    s = model.encode_words(ids, lengths)
    got_s = sentence_offsets(model, bank, s, torch.ones(1, ids.shape[1], dtype=torch.bool))
    vb = model.encode_regions(bank.photo_feats)
    per = [float(score(vb[j : j + 1], bank.photo_mask[j : j + 1, : vb.shape[1]], s,
                       torch.ones(1, ids.shape[1], dtype=torch.bool))) for j in range(len(vb))]
    assert float(got_s[0]) == pytest.approx(0.5 / 5.0 * float(torch.logsumexp(5.0 * torch.tensor(per), 0)), abs=1e-5)


def test_a_model_file_carries_its_querybank(banked: Path, tmp_path: Path) -> None:
    m = load_align(banked)
    plain = load_align(banked.with_name("plain.pt"))
    assert plain.querybank is None and m.querybank is not None
    assert m.metrics["querybank"] == {"beta": 5.0, "weight": 0.5, "sentences": 4, "photos": 3, "bits": 8}
    assert torch.equal(m.querybank.sent_ids[:, :5], pad_ids([m.vocab.encode_text(s) for s in BANK_SENTENCES])[0][:, :5])
    assert m.fingerprint != plain.fingerprint  # an index built with one refuses the other
    sd_m, sd_p = m.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(sd_m[k], sd_p[k]) for k in sd_p)
    again = load_align(save_align(m.model, m.vocab, TINY, tmp_path / "again.pt", querybank=m.querybank))
    assert again.fingerprint == m.fingerprint


def _raw(index: ix.FragmentIndex, q, item: int) -> float:
    return float(item_scores(q @ index.vectors([item])[0].T, np.zeros(1, np.int64))[0][0])


def test_index_scores_are_the_model_score_less_the_photo_offset(banked: Path, sample_photos: list[Path],
                                                               tiny_region_encoder, tmp_path: Path) -> None:
    m = load_align(banked)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_photos[:3]:
        shutil.copy2(p, photos / p.name)
    link = tmp_path / "idx" / "photos"
    ix.build_photos([photos], m, link, encoder=tiny_region_encoder, batch_size=2)
    with ix.open_index(link) as index:
        offsets = index.offsets.copy()
        assert len(offsets) == 3 and (offsets != 0).all()
        for i in range(3):
            assert offsets[i] == pytest.approx(photo_offset(m, index.vectors([i])[0]), abs=1e-5)
        _, _, q = query_vectors(m, "a dog running on the grass")
        res = query.search_text(index, m, "a dog running on the grass", k=3)
        keys = [index.record(i)["key"] for i in range(3)]
        for hit in res.hits:
            i = keys.index(hit.key)
            assert hit.score == pytest.approx(_raw(index, q, i) - offsets[i], abs=1e-4)
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    shutil.copy2(sample_photos[3], photos / sample_photos[3].name)
    r = ix.build_photos([photos], m, link, encoder=tiny_region_encoder, batch_size=2)
    assert r.encoded == 1 and r.unchanged == 3
    with ix.open_index(link) as index:
        kept = {index.record(i)["key"]: float(index.offsets[i]) for i in range(len(index))}
    assert all(kept[k] == pytest.approx(float(o)) for k, o in zip(keys, offsets))


def test_sentence_index_scores_are_less_the_sentence_offset(banked: Path, sample_photos: list[Path],
                                                            tiny_region_encoder, tmp_path: Path) -> None:
    m = load_align(banked)
    text = tmp_path / "s.txt"
    text.write_text("a dog on the grass\na man in red is running\ntwo girl in the water\n")
    link = tmp_path / "idx" / "sentences"
    sentences.build_sentences([text], m, link)
    with ix.open_index(link, kind="sentences") as index:
        assert (index.offsets != 0).all()
        res = query.search_image(index, m, sample_photos[0], k=3, encoder=tiny_region_encoder)
        _, v = query.photo_regions(m, sample_photos[0], tiny_region_encoder)
        for hit in res.hits:
            i = next(j for j in range(len(index)) if index.record(j)["key"] == hit.key)
            raw = float((index.vectors([i])[0].astype("float32") @ v.T).max(1).sum())
            assert hit.score == pytest.approx(raw - float(index.offsets[i]), abs=1e-4)


def test_eval_recall_shows_the_model_with_and_without_it(banked: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    photos = Path(__file__).resolve().parent.parent / "examples" / "photos"
    names = sorted(p.name for p in photos.glob("*.jpg"))[:4]
    doc = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
           "annotations": [{"image_id": i, "caption": f"{WORDS[i]} {WORDS[i + 4]} {w}"}
                           for i in range(len(names)) for w in ("water", "grass")]}
    captions = tmp_path / "caps.json"
    captions.write_text(json.dumps(doc))
    monkeypatch.setenv("VSA_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["eval", "recall", "--model", str(banked), "--dataset", "coco", "--root", str(photos),
                                 "--captions", str(captions), "--split", "all", "--baseline", "none", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert rows[0]["name"] == "this model: banked.pt" and rows[0]["querybank"]["photos"] == 3
    assert rows[1]["name"] == "this model: banked.pt, without querybank normalisation"
    assert "querybank" not in rows[1]


@torch.no_grad()
def test_the_bank_sentences_are_encoded_a_chunk_at_a_time(banked_hybrid: Path, monkeypatch) -> None:
    """A bank of thousands of sentences is encoded a few at a time: all at once, padded to the longest,
    2,000 sentences took 0.4 GB at the first photo of an index build. The words come out the same."""
    from vsa_search.models.score import shared_width

    m = load_align(banked_hybrid)
    shared = shared_width(m.model)
    whole = m.querybank.split_words(m.model, "cpu", shared, chunk=len(BANK_SENTENCES))
    sizes: list[int] = []
    real = m.model.encode_words
    monkeypatch.setattr(m.model, "encode_words", lambda ids, lengths: sizes.append(len(ids)) or real(ids, lengths))
    m.querybank._cache.clear()
    parts = m.querybank.split_words(m.model, "cpu", shared, chunk=3)
    assert sizes == [3, 1]
    assert torch.equal(parts[1], whole[1]) and parts[2] == whole[2] == len(BANK_SENTENCES)
    assert torch.allclose(parts[0], whole[0], atol=1e-6) and torch.allclose(parts[3], whole[3], atol=1e-6)
    assert not parts[0].requires_grad and parts[0].is_contiguous()


def test_the_bank_photos_are_stored_in_8_bits_within_half_a_step(banked: Path) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(3, 5, 64, generator=g)) * 4
    feats[1, 3:] = 0  # padded regions stay exactly zero
    codes, low, step = quantize(feats)
    assert codes.dtype == torch.uint8 and low.shape == step.shape == (3, 5, 1)
    back = dequantize(codes, low, step)
    assert torch.all((back - feats).abs() <= step.float() / 2 + 1e-6)
    assert torch.equal(back[1, 3:], torch.zeros(2, 64))
    assert torch.equal(stored(back), back)  # storing again changes nothing: a bank is chosen as it ships
    blob = torch.load(banked, weights_only=True)
    assert blob["format_version"] == checkpoint.FORMAT_VERSION == 3
    assert blob["state_dict"]["querybank.photo_codes"].dtype == torch.uint8


def test_a_format_1_file_with_a_float16_bank_still_loads(banked: Path, tmp_path: Path) -> None:
    m = load_align(banked)
    blob = torch.load(banked, weights_only=True)
    sd = blob["state_dict"]
    for k in ("photo_codes", "photo_low", "photo_step"):
        sd.pop("querybank." + k)
    sd["querybank.photo_feats"] = m.querybank.photo_feats.half()
    blob["format_version"] = 1
    torch.save(blob, tmp_path / "v1.pt")
    old = load_align(tmp_path / "v1.pt")
    assert torch.equal(old.querybank.photo_feats, m.querybank.photo_feats.half().float())
    blob["format_version"] = 4
    torch.save(blob, tmp_path / "v4.pt")
    with pytest.raises(ModelError, match="model format 4, this version reads 1, 2 and 3$"):
        load_align(tmp_path / "v4.pt")


@pytest.mark.parametrize("which", ["banked", "banked_hybrid"])
def test_a_bank_of_region_vectors_scores_as_its_features_do(which: str, request: pytest.FixtureRequest,
                                                            tmp_path: Path) -> None:
    m = load_align(request.getfixturevalue(which))
    feats_bank = m.querybank
    vec_bank = feats_bank.encoded(m.model)
    assert vec_bank.photo_feats is None and vec_bank.photo_parts is not None
    assert (vec_bank.photo_shared is not None) == (which == "banked_hybrid")  # the hybrid's global terms, once
    want, mask = feats_bank.regions(m.model, "cpu")
    got, mask2 = vec_bank.regions(m.model, "cpu")
    assert torch.equal(mask, mask2)
    half_step = (want.amax(-1, keepdim=True) - want.amin(-1, keepdim=True)) / 255 / 2  # 8 bits a vector
    assert torch.all(((got - want).abs() <= half_step * 1.01 + 1e-4)[mask])
    ids, lengths = pad_ids([m.vocab.encode_text("a red dog running")])
    s = m.model.encode_words(ids, lengths)
    wm = torch.ones(1, ids.shape[1], dtype=torch.bool)
    assert float(sentence_offsets(m.model, vec_bank, s, wm)[0]) == pytest.approx(
        float(sentence_offsets(m.model, feats_bank, s, wm)[0]), rel=0.02)  # the tiny models' vectors are not unit
    # the file holds the vectors as the bank had them: loading gives back the very same
    again = load_align(save_align(m.model, m.vocab, TINY, tmp_path / "vec.pt", querybank=vec_bank)).querybank
    assert again.photo_feats is None and torch.equal(again.regions(m.model, "cpu")[0], got)
    assert again.header() == feats_bank.header()


def test_pack4_holds_two_codes_a_byte() -> None:
    codes = torch.tensor([[a, b] for a in range(16) for b in range(16)], dtype=torch.uint8).reshape(8, 64)
    packed = pack4(codes)
    assert packed.shape == (8, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack4(packed), codes)


@pytest.mark.parametrize("which", ["banked", "banked_hybrid"])
def test_a_4_bit_bank_fits_twice_the_photos_and_scores_as_the_8_bit_one(which: str, request: pytest.FixtureRequest,
                                                                        tmp_path: Path) -> None:
    m = load_align(request.getfixturevalue(which))
    want, mask = m.querybank.regions(m.model, "cpu")  # from the features, in float32
    b8, b4 = m.querybank.encoded(m.model), m.querybank.encoded(m.model, 4)
    assert (b4.bits, b4.header()["bits"], b8.header()["bits"]) == (4, 4, 8)
    own = b4.photo_parts.shape[2]
    half_step = (want[..., :own].amax(-1, keepdim=True) - want[..., :own].amin(-1, keepdim=True)) / 15 / 2
    got = b4.regions(m.model, "cpu")[0]
    assert torch.all(((got[..., :own] - want[..., :own]).abs() <= half_step * 1.01 + 1e-4)[mask])
    assert torch.equal(got[..., own:], b8.regions(m.model, "cpu")[0][..., own:])  # the shared part stays 8 bits
    sd = {}
    for bits, bank in ((8, b8), (4, b4)):
        path = save_align(m.model, m.vocab, TINY, tmp_path / f"b{bits}.pt", querybank=bank)
        sd[bits] = torch.load(path, weights_only=True)["state_dict"]
        again = load_align(path).querybank
        assert again.bits == bits and torch.equal(again.photo_parts, bank.photo_parts)  # as chosen, so loaded
    assert "querybank.photo_parts_codes" not in sd[4] and "querybank.photo_parts_codes4" not in sd[8]
    assert sd[4]["querybank.photo_parts_codes4"].numel() * 2 == sd[8]["querybank.photo_parts_codes"].numel()
    ids, lengths = pad_ids([m.vocab.encode_text("a red dog running")])
    s = m.model.encode_words(ids, lengths)
    wm = torch.ones(1, ids.shape[1], dtype=torch.bool)
    # 16 levels over the tiny models' few dimensions: within a tenth (the shipped bank's dev figures: as in 8 bits)
    assert float(sentence_offsets(m.model, b4, s, wm)[0]) == pytest.approx(
        float(sentence_offsets(m.model, b8, s, wm)[0]), rel=0.1)
    with pytest.raises(ValueError, match="8 or 4 bits, not 6"):
        m.querybank.encoded(m.model, 6)
