"""One path from a photo file to its regions: every command computes a photo's regions as an index
build does (decoded at the extractor's scale, boxes in the photo's own coordinates)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_align import tiny_model

from vsa_search import captioning, index
from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS
from vsa_search.index.query import photo_regions
from vsa_search.models.alignment import load_align
from vsa_search.models.captioner import Captioner, load_caption, save_caption
from vsa_search.vision.regions import extract

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
    np.testing.assert_allclose(vecs, built["vectors"], rtol=0, atol=2e-3 * (1 + np.abs(vecs).max()))  # float16
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
