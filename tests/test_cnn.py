"""The numpy CNN (vision/cnn.py) gives the features RegionEncoder (timm + torchvision) gives, its
RoIAlign is torchvision's, its head the concepts' head, and its weights come from an export that is
made again when the backbone file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.core import arrayfile
from vsa_search.core.config import REGION_PRESETS, RegionConfig
from vsa_search.vision import cnn
from vsa_search.vision.concepts import region_probs
from vsa_search.vision.regions import RegionEncoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"


@pytest.fixture(scope="module")
def encoders() -> tuple[RegionEncoder, cnn.NumpyRegionEncoder]:
    cfg = RegionConfig()
    return RegionEncoder(cfg, "cpu"), cnn.NumpyRegionEncoder(cfg)


@pytest.mark.parametrize("name", ["coffee.jpg", "horse.jpg", "astronaut.jpg", "grass.jpg"])
def test_numpy_features_equal_timm_and_torchvisions(encoders, name: str) -> None:
    torch_enc, numpy_enc = encoders
    want = torch_enc.encode_photo(EXAMPLES / name)
    got = numpy_enc.encode_photo(EXAMPLES / name)
    assert np.array_equal(got.boxes, want.boxes)
    assert got.features.dtype == np.float32 and got.features.shape == want.features.shape == (len(want.boxes), 1280)
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)
    assert np.abs(want.features).max() > 1.0  # real activations, not a map of zeros


def test_a_smaller_input_size_too(encoders) -> None:
    cfg = REGION_PRESETS["tiny"]  # 160 px: a 5x5 map, other padding at every stride
    want = RegionEncoder(cfg, "cpu", ).encode_photo(EXAMPLES / "rocket.jpg")
    got = cnn.NumpyRegionEncoder(cfg).encode_photo(EXAMPLES / "rocket.jpg")
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)


def test_roi_align_equals_torchvisions_on_random_boxes() -> None:
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    fmap = rng.standard_normal((7, 9, 16)).astype(np.float32)
    corners = rng.uniform(-60, 330, (200, 2, 2)).astype(np.float32)  # inside, across and outside the map
    boxes = np.concatenate([corners.min(1), corners.max(1)], 1)
    boxes[:5, 2:] = boxes[:5, :2]  # empty boxes
    for output, scale in ((2, 1 / 32), (3, 1 / 16)):
        want = roi_align(torch.from_numpy(fmap).permute(2, 0, 1)[None].contiguous(),
                         torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], 1)),
                         output, spatial_scale=scale, sampling_ratio=2, aligned=True).permute(0, 2, 3, 1).numpy()
        got = cnn.roi_align(fmap, boxes, output, scale)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_the_head_gives_the_concepts_probabilities(encoders) -> None:
    _, numpy_enc = encoders
    feats = numpy_enc.encode_photo(EXAMPLES / "coffee.jpg").features
    np.testing.assert_allclose(numpy_enc.concepts(feats), region_probs(feats), atol=1e-6)


def test_same_padding_is_tensorflows() -> None:
    assert cnn._same(224, 3, 2) == (0, 1)  # the extra pixel after, as timm's Conv2dSame
    assert cnn._same(56, 5, 2) == (1, 2)
    assert cnn._same(14, 5, 1) == (2, 2)


def test_the_export_is_made_again_for_a_changed_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VSA_HOME", str(tmp_path))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"one")
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "empty": np.zeros((0, 4), np.int64)}
    arrayfile.write_export("test", src, {"note": "x"}, arrays)
    header, got = arrayfile.cached_export("test", src)
    assert header["note"] == "x" and np.array_equal(got["a"], arrays["a"]) and got["empty"].shape == (0, 4)
    assert arrayfile.cached_export("other", src) is None
    os.utime(src, ns=(1, 1))  # the same bytes, touched: no longer known to be the exported file
    assert arrayfile.cached_export("test", src) is None
    arrayfile.write_export("test", src, {"note": "y"}, arrays)
    assert arrayfile.cached_export("test", src)[0]["note"] == "y"
    p = arrayfile.export_path("test", src)
    p.write_bytes(p.read_bytes()[:-8])  # cut short: not read, made again
    assert arrayfile.cached_export("test", src) is None


def test_with_a_fine_tuned_top_the_features_equal_the_torch_encoders(tmp_path: Path) -> None:
    import dataclasses

    from tiny_align import tiny_top

    from vsa_search.core.config import top_id
    from vsa_search.core.errors import ModelError
    from vsa_search.vision.tops import top_cut

    top = tiny_top()
    cfg = dataclasses.replace(REGION_PRESETS["tiny"], top=top_id(top))
    want = RegionEncoder(cfg, "cpu", top=top).encode_photo(EXAMPLES / "horse.jpg")
    enc = cnn.NumpyRegionEncoder(cfg, top=top)
    got = enc.encode_photo(EXAMPLES / "horse.jpg")
    assert np.array_equal(got.boxes, want.boxes) and got.imagenet is not None
    # the tuned backbone shares ImageNet's stem and lower stages (a cold caption builds them once)
    cut = enc.model.stage_start[top_cut(cfg)]
    assert enc.tuned.stem is enc.model.stem and enc.tuned.blocks[:cut] == enc.model.blocks[:cut]
    assert all(a is b for a, b in zip(enc.tuned.blocks[:cut], enc.model.blocks[:cut]))
    assert enc.tuned.head is not enc.model.head and len(enc.tuned.blocks) == len(enc.model.blocks)
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.imagenet, want.imagenet, atol=1e-4, rtol=0)
    # ImageNet's features are the plain encoder's; the top's are other features
    plain = cnn.NumpyRegionEncoder(REGION_PRESETS["tiny"]).encode_photo(EXAMPLES / "horse.jpg")
    assert plain.imagenet is None and np.array_equal(got.imagenet, plain.features)
    assert np.abs(got.features - got.imagenet).max() > 0.1
    with pytest.raises(ModelError, match="need that top's weights"):
        cnn.NumpyRegionEncoder(cfg)
    with pytest.raises(ModelError, match="need that top's weights"):
        cnn.NumpyRegionEncoder(REGION_PRESETS["tiny"], top=top)
