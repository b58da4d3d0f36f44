"""Test-time views of a photo: horizontal flips (RegionConfig.flip), a region's features the mean of its own
and those of the same region of the mirror image, so a photo and its mirror image read alike; extra input
sizes (RegionConfig.extra_sizes), one more view each. The torch and numpy CNNs agree; ImageNet's features
beside them (concepts, caption generators) stay the photo's own; a model file asks for them (`vsa train
ensemble --flip --extra-size N`), and features from stored maps, which hold one view, are refused in one
line. Tiny presets and the repo's sample photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from tiny_align import TINY, WORDS, tiny_top
from typer.testing import CliRunner

from vsa_search.captioning.rerank import fits
from vsa_search.cli import app
from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS, top_id
from vsa_search.core.errors import ModelError, StoreError
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models.alignment import build_model, load_align, save_align
from vsa_search.vision import cnn
from vsa_search.vision.regions import RegionEncoder, decode_side, mirror_boxes, propose
from vsa_search.vision.trunk import extract_with_top

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
runner = CliRunner()


@pytest.fixture(scope="module")
def top() -> dict:
    return tiny_top()


def _cfg(top: dict | None, flip: bool = True):
    return dataclasses.replace(TINY, top=top_id(top) if top else "", flip=flip)


def test_boxes_mirror_about_the_photo_width() -> None:
    boxes = np.array([[0, 0, 400, 300], [10, 20, 110, 220], [300, 0, 400, 50]], np.int32)
    got = mirror_boxes(boxes, 400)
    assert got.tolist() == [[0, 0, 400, 300], [290, 20, 390, 220], [0, 0, 100, 50]]
    assert mirror_boxes(got, 400).tolist() == boxes.tolist()


@pytest.mark.parametrize("with_top", [True, False])
def test_a_photo_and_its_mirror_image_read_alike(top, with_top: bool) -> None:
    weights = top if with_top else None
    flipped, plain = RegionEncoder(_cfg(weights), "cpu", top=weights), RegionEncoder(_cfg(weights, False), "cpu",
                                                                                     top=weights)
    image = Image.open(EXAMPLES / "horse.jpg").convert("RGB")  # not left-right symmetric
    boxes = propose(image, TINY)
    mirror, mboxes = ImageOps.mirror(image), mirror_boxes(boxes, image.width)
    (f,), (base,) = flipped.encode_both([image], [boxes])
    (fm,), _ = flipped.encode_both([mirror], [mboxes])
    (p,), _ = plain.encode_both([image], [boxes])
    (pm,), _ = plain.encode_both([mirror], [mboxes])
    np.testing.assert_allclose(f, fm, atol=1e-4, rtol=0)  # the same regions, read alike
    np.testing.assert_allclose(f, (p + pm) / 2, atol=1e-5, rtol=0)  # the mean of the photo's and the mirror's
    assert np.abs(p - pm).max() > 0.1  # which differ: the photo is not symmetric
    # ImageNet's features of the photo itself, as without flips
    imagenet = RegionEncoder(TINY, "cpu").encode_both([image], [boxes])[0][0]
    np.testing.assert_allclose(base, imagenet, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_top", [True, False])
def test_the_numpy_cnn_flips_as_the_torch_one(top, with_top: bool) -> None:
    weights = top if with_top else None
    cfg = _cfg(weights)
    want = RegionEncoder(cfg, "cpu", top=weights).encode_photo(EXAMPLES / "coffee.jpg")
    got = cnn.NumpyRegionEncoder(cfg, top=weights).encode_photo(EXAMPLES / "coffee.jpg")
    assert np.array_equal(got.boxes, want.boxes) and got.imagenet is not None and want.imagenet is not None
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.imagenet, want.imagenet, atol=1e-4, rtol=0)
    assert np.abs(got.features - got.imagenet).max() > 0.01


def test_an_extra_size_is_one_more_view_of_equal_weight(top) -> None:
    cfg = dataclasses.replace(_cfg(top), extra_sizes=(224,))  # tiny reads 160 px
    image = Image.open(EXAMPLES / "grass.jpg").convert("RGB")
    boxes = propose(image, TINY)
    (both,), (base,) = RegionEncoder(cfg, "cpu", top=top).encode_both([image], [boxes])
    (flipped,), _ = RegionEncoder(_cfg(top), "cpu", top=top).encode_both([image], [boxes])
    at224 = dataclasses.replace(_cfg(top, False), input_size=224)
    (large,), _ = RegionEncoder(at224, "cpu", top=top).encode_both([image], [boxes])
    np.testing.assert_allclose(both, (flipped + large) / 2, atol=1e-5, rtol=0)
    assert np.abs(flipped - large).max() > 0.05  # the larger input is another view
    imagenet = RegionEncoder(TINY, "cpu").encode_both([image], [boxes])[0][0]
    np.testing.assert_allclose(base, imagenet, atol=1e-5, rtol=0)
    # the numpy CNN reads the same views; the photo is decoded large enough for the largest
    got = cnn.NumpyRegionEncoder(cfg, top=top).encode_photo(EXAMPLES / "grass.jpg")
    want = RegionEncoder(cfg, "cpu", top=top).encode_photo(EXAMPLES / "grass.jpg")
    np.testing.assert_allclose(got.features, want.features, atol=1e-4, rtol=0)
    assert decode_side(cfg) == 224 and decode_side(TINY) == max(TINY.input_size, TINY.ss_max_side)
    assert cfg.imagenet() == TINY and cfg.extractor_id() != _cfg(top).extractor_id()


def test_flips_are_an_extractor_of_their_own_with_imagenets_features_beside(top) -> None:
    cfg = _cfg(top)
    assert cfg.extractor_id() != _cfg(top, False).extractor_id()  # flipped features never pass for plain ones
    assert dataclasses.replace(TINY, flip=False).extractor_id() == TINY.extractor_id()  # ids made before stand
    assert cfg.imagenet() == TINY and fits(cfg, TINY)  # the generators of ImageNet's features re-rank with it
    with pytest.raises(ModelError, match="flips and sizes need RoI pooling"):
        RegionEncoder(dataclasses.replace(REGION_PRESETS["crop"], flip=True), "cpu")


def test_an_ensemble_made_with_flip_or_extra_sizes_reads_its_photos_so(top, tmp_path: Path) -> None:
    vocab = Vocab(list(SPECIALS) + WORDS)
    cfg = _cfg(top, False)
    shape = dataclasses.replace(EMBED_PRESETS["tiny"], normalize=True)
    for name, arch in (("base", "hybrid"), ("member", "global")):
        save_align(build_model(dataclasses.replace(shape, arch=arch), len(vocab)).eval(), vocab, cfg,
                   tmp_path / f"{name}.pt", top=top)
    res = runner.invoke(app, ["train", "ensemble", "--base", str(tmp_path / "base.pt"), "--member",
                              str(tmp_path / "member.pt"), "--out", str(tmp_path / "ens.pt"), "--flip", "--json"])
    assert res.exit_code == 0, res.stderr
    ens = load_align(tmp_path / "ens.pt")
    assert ens.region_config == _cfg(top) and top_id(ens.top) == cfg.top
    res = runner.invoke(app, ["train", "ensemble", "--base", str(tmp_path / "base.pt"), "--member",
                              str(tmp_path / "member.pt"), "--out", str(tmp_path / "ms.pt"), "--extra-size", "224"])
    assert res.exit_code == 0, res.stderr
    ms = load_align(tmp_path / "ms.pt").region_config
    assert ms == dataclasses.replace(cfg, extra_sizes=(224,)) and not ms.flip
    # its features come from the photos: stored maps have no mirror image
    with pytest.raises(StoreError, match="test-time flips or sizes need the photos themselves"):
        extract_with_top({"horse": EXAMPLES / "horse.jpg"}, tmp_path / "store", ens.region_config, ens.top,
                         maps=tmp_path / "maps", frozen=tmp_path / "frozen")
    assert not (tmp_path / "store").exists()
