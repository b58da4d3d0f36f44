from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vsa_search.core.config import REGION_PRESETS, RegionConfig
from vsa_search.vision import images, regions


@pytest.mark.parametrize("method", ["selective", "grid"])
def test_boxes_are_valid(sample_photos: list[Path], method: str) -> None:
    cfg = RegionConfig(proposals=method)
    for p in sample_photos:
        im = images.load(p)
        w, h = im.size
        boxes = regions.propose(im, cfg)
        assert boxes.dtype == np.int32 and boxes.shape[1] == 4
        assert 2 <= len(boxes) <= 20
        assert boxes[0].tolist() == [0, 0, w, h]  # full image first
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        iou = regions.box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= cfg.nms_iou + 1e-9  # deduplicated


def test_selective_search_differs_from_grid(sample_photos: list[Path]) -> None:
    im = images.load(sample_photos[1])
    ss = regions.propose(im, RegionConfig(proposals="selective"))
    grid = regions.propose(im, RegionConfig(proposals="grid"))
    assert len(ss) == 20
    assert not np.array_equal(ss, grid[: len(ss)])


def test_max_regions_is_respected(sample_photos: list[Path]) -> None:
    im = images.load(sample_photos[2])
    assert len(regions.propose(im, RegionConfig(max_regions=5))) == 5
    assert len(regions.propose(im, RegionConfig(proposals="none"))) == 1


def test_feature_shape_and_determinism(sample_photos: list[Path], tiny_region_encoder) -> None:
    enc = tiny_region_encoder
    ims = [images.load(p) for p in sample_photos[:3]]
    boxes = [regions.propose(im, enc.cfg) for im in ims]
    a = enc.encode(ims, boxes)
    b = enc.encode(ims, boxes)
    alone = enc.encode(ims[1:2], boxes[1:2])[0]
    for f, bx in zip(a, boxes):
        assert f.shape == (len(bx), 1280) and f.dtype == np.float32
        assert np.isfinite(f).all() and f.std() > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # A photo's features do not depend on what else is in its batch.
    np.testing.assert_allclose(a[1], alone, rtol=1e-4, atol=1e-4)
    # Different regions of one photo get different features.
    assert not np.allclose(a[0][0], a[0][1])


def test_crop_pooling_matches_shape(sample_photos: list[Path]) -> None:
    cfg = replace(REGION_PRESETS["tiny"], pooling="crop", crop_size=96)
    enc = regions.RegionEncoder(cfg, device="cpu")
    rf = enc.encode_one(images.load(sample_photos[0]))
    assert rf.features.shape == (len(rf.boxes), 1280)


def test_backbone_classifies_a_dog(flickr_root: Path) -> None:
    """The shipped ImageNet weights really loaded: a Flickr8k dog photo scores a dog class."""
    import torch

    model = regions.load_backbone("tf_efficientnet_lite0")
    im = images.load(flickr_root / "images" / "1001773457_577c3a7d70.jpg")  # two dogs
    x = torch.from_numpy(np.asarray(im.resize((224, 224)), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    with torch.inference_mode():
        top = model(x[None]).softmax(-1)[0].topk(5).indices.tolist()
    assert any(151 <= c <= 268 for c in top)  # ImageNet classes 151-268 are dog breeds
