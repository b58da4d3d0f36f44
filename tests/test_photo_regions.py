"""One path from a photo file to its regions: every command computes a photo's regions as an index
build does (decoded at the extractor's scale, boxes in the photo's own coordinates), and a build
decodes each photo once, its hashes and EXIF measured from the same decode."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from tiny_align import tiny_model

from vsa_search import captioning, index
from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS, RegionConfig
from vsa_search.index import dupes, photometa
from vsa_search.index.query import photo_regions
from vsa_search.models.alignment import load_align
from vsa_search.models.captioner import Captioner, load_caption, save_caption
from vsa_search.vision import images, phash
from vsa_search.vision.regions import decode_side, extract, prepare

TINY = REGION_PRESETS["tiny"]


def big_jpeg(src: Path, dst: Path, size: tuple[int, int] = (2000, 1500)) -> Path:
    """A phone-sized JPEG, large enough that the extractor decodes it at a reduced scale."""
    Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(dst, quality=92)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sample_photos: list[Path], tiny_region_encoder) -> dict:
    d = tmp_path_factory.mktemp("regions")
    (d / "photos").mkdir()
    photo = big_jpeg(sample_photos[1], d / "photos" / "big.jpg")
    shutil.copy2(sample_photos[2], d / "photos" / sample_photos[2].name)
    outside = d / "elsewhere.jpg"  # the same bytes, not in the index: its regions are computed afresh
    shutil.copy2(photo, outside)
    model = load_align(tiny_model(d / "tiny.pt"))
    index.build_photos([d / "photos"], model, d / "ix", encoder=tiny_region_encoder, batch_size=2)
    with index.open_index(d / "ix") as ix:
        i = next(j for j in range(len(ix)) if ix.record(j)["key"].endswith("big.jpg"))
        stored = ix.boxes(i).copy(), ix.vectors([i])[0].astype(np.float32)
    return {"dir": d, "photo": photo, "outside": outside, "model": model, "boxes": stored[0], "vectors": stored[1]}


def test_encode_photo_is_what_a_build_extracts(built: dict, tiny_region_encoder) -> None:
    enc = tiny_region_encoder
    (_, batched), = list(extract([built["photo"]], enc))
    alone = enc.encode_photo(built["outside"])
    np.testing.assert_array_equal(alone.boxes, batched.boxes)
    np.testing.assert_allclose(alone.features, batched.features, rtol=0, atol=1e-4)
    assert alone.boxes[0].tolist() == [0, 0, 2000, 1500]  # the photo's own coordinates, not the decoded copy's
    with open(built["outside"], "rb") as f:  # an opened (checked) file, as the server passes it
        np.testing.assert_array_equal(enc.encode_photo(built["outside"], file=f).boxes, batched.boxes)


def test_like_of_a_large_photo_has_the_indexed_regions(built: dict, tiny_region_encoder) -> None:
    boxes, vecs = photo_regions(built["model"], built["outside"], tiny_region_encoder)  # --like, --image
    np.testing.assert_array_equal(boxes, built["boxes"])
    # The index keeps each vector as int8 with one scale per vector: within one step of the largest entry.
    step = np.abs(vecs).max(axis=1, keepdims=True) / 127
    assert (np.abs(vecs - built["vectors"]) <= step).all()
    with index.open_index(built["dir"] / "ix") as ix:
        res = index.search_photo(ix, built["model"], built["outside"], k=2, encoder=tiny_region_encoder)
    assert res.photo_id is None and res.boxes == built["boxes"].tolist()


def test_region_captions_of_a_large_photo_use_the_indexed_regions(built: dict, caption_vocab,
                                                                   tiny_region_encoder, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cap = load_caption(save_caption(Captioner(dataclasses.replace(CAPTION_PRESETS["tiny"]), len(caption_vocab)),
                                    caption_vocab, TINY, tmp_path / "cap.pt"))
    got = captioning.caption_regions_of([built["outside"]], cap, tiny_region_encoder, beam=1,
                                        out_png=tmp_path / "dense.png")
    assert [r["box"] for r in got[0]["regions"]] == built["boxes"].tolist()
    assert Image.open(tmp_path / "dense.png").size == (2000, 1500)  # drawn on the full photo


def test_build_decodes_each_photo_once(sample_photos: list[Path], tmp_path: Path, tiny_region_encoder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p").mkdir()
    big_jpeg(sample_photos[0], tmp_path / "p" / "big.jpg")
    big_jpeg(sample_photos[1], tmp_path / "p" / "small.jpg", (300, 225))  # under 2x decode_side: not reduced
    shutil.copy2(sample_photos[2], tmp_path / "p" / sample_photos[2].name)
    model = load_align(tiny_model(tmp_path / "tiny.pt"))
    opened: Counter[str] = Counter()
    real_open = Image.open

    def counting_open(fp, *a, **kw):  # noqa: ANN001, ANN202
        opened[Path(getattr(fp, "name", fp)).name] += 1
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", counting_open)
    index.build_photos([tmp_path / "p"], model, tmp_path / "ix", encoder=tiny_region_encoder, batch_size=2)
    monkeypatch.undo()
    assert opened == Counter({"big.jpg": 1, "small.jpg": 1, sample_photos[2].name: 1})
    with index.open_index(tmp_path / "ix") as ix:
        metas = {Path(ix.record(i)["key"]).name: ix.record(i)["meta"] for i in range(len(ix))}
    # the photo's own size, whatever scale it was decoded at; the hash a full decode gives
    assert (metas["big.jpg"]["width"], metas["big.jpg"]["height"]) == (2000, 1500)
    full = phash.fingerprint(images.load(tmp_path / "p" / "big.jpg"))
    assert phash.hamming(int(metas["big.jpg"]["phash"], 16), int(full["phash"], 16)) <= 2
    # photos the extractor does not reduce are measured exactly as a full decode measures them
    small = tmp_path / "p" / "small.jpg"
    assert metas[small.name] == {"v": photometa.META_VERSION, **phash.fingerprint(images.load(small))}


def test_old_index_meta_is_read_as_a_build_reads_it(sample_photos: list[Path], tmp_path: Path) -> None:
    big = big_jpeg(sample_photos[0], tmp_path / "big.jpg")
    assert photometa.describe(big, min_side=decode_side(TINY)) == photometa.of_prepared(prepare(big, TINY))


@pytest.mark.parametrize("cfg", [RegionConfig(), TINY], ids=["default", "tiny"])
def test_reduced_decode_hashes_as_a_half_size_copy(sample_photos: list[Path], tmp_path: Path,
                                                   cfg: RegionConfig) -> None:
    """dupes compares the stored hashes: a large photo's (from its reduced decode) and a half-size
    copy's stay well within the duplicate threshold, and a blurred copy of the same size still
    measures less sharp (dupes keeps the sharpest of the largest)."""
    limit = (1 - dupes.DEFAULT_THRESHOLD) * dupes.HASH_SCALE
    for p in sample_photos[:6]:
        big = big_jpeg(p, tmp_path / f"big-{p.name}")
        im = Image.open(big)
        im.resize((1000, 750), Image.LANCZOS).save(tmp_path / "half.jpg", quality=80)
        im.filter(ImageFilter.GaussianBlur(3)).save(tmp_path / "blur.jpg", quality=92)
        m, half, blur = (photometa.of_prepared(prepare(q, cfg)) for q in (big, tmp_path / "half.jpg",
                                                                          tmp_path / "blur.jpg"))
        assert [(x["width"], x["height"]) for x in (m, half)] == [(2000, 1500), (1000, 750)]
        assert phash.hamming(int(m["phash"], 16), int(half["phash"], 16)) <= limit / 2, p.name
        assert blur["sharp"] < m["sharp"], p.name
        if cfg == RegionConfig():  # decoded at >= 224 px: sharpness as a full decode measures it
            assert m["sharp"] == pytest.approx(phash.fingerprint(images.load(big))["sharp"], rel=0.1), p.name
