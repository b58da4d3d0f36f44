"""The CLI's and the server's defaults are the library's own definitions, not copies of their values."""

from __future__ import annotations

import inspect

import vsa_search
from vsa_search.align import mrf
from vsa_search.cli import caption as cli_caption
from vsa_search.cli import index as cli_index
from vsa_search.cli import serve as cli_serve
from vsa_search.cli import train as cli_train
from vsa_search.core import config, paths
from vsa_search.index.layout import DEFAULT_NAME
from vsa_search.index.photos import BATCH_SIZE
from vsa_search.train import add_querybank
from vsa_search.vision import images


def defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_train_querybank_options_are_the_librarys_defaults() -> None:
    d = defaults(cli_train.querybank_cmd)
    lib = defaults(add_querybank.add_querybank)
    assert (d["sentences"], d["photos"], d["beta"], d["weight"]) == (
        add_querybank.DEFAULT_SENTENCES, add_querybank.DEFAULT_PHOTOS, add_querybank.DEFAULT_BETA,
        add_querybank.DEFAULT_WEIGHT) == (lib["sentences"], lib["photos"], lib["beta"], lib["weight"])


def test_serve_options_are_the_librarys_defaults() -> None:
    d = defaults(cli_serve.serve_cmd)
    assert d["index"] == DEFAULT_NAME
    assert d["max_megapixels"] == images.DEFAULT_MAX_MEGAPIXELS
    assert cli_index.parse_size(d["max_upload"]) == images.MAX_UPLOAD_BYTES
    assert d["caption_model"] == paths.CAPTION_MODEL


def test_models_beam_and_batch_defaults_are_one_definition() -> None:
    from vsa_search.serve.engine import Engine

    assert defaults(Engine.__init__)["caption_model"] == paths.CAPTION_MODEL
    assert defaults(vsa_search.load)["caption"] == paths.CAPTION_MODEL
    assert defaults(vsa_search.load)["align"] == paths.ALIGN_MODEL
    assert defaults(cli_caption.caption_cmd)["beam"] == defaults(vsa_search.caption)["beam"] == config.DEFAULT_BEAM
    assert defaults(Engine.caption)["beam"] == config.DEFAULT_BEAM
    assert defaults(cli_index.build_cmd)["batch_size"] == BATCH_SIZE
    assert defaults(Engine.align_id)["beta"] == mrf.DEFAULT_BETA


def test_caption_and_extract_defaults_are_one_definition() -> None:
    from vsa_search import captioning
    from vsa_search.captioning import constrained
    from vsa_search.cli import features as cli_features
    from vsa_search.models import decode_np
    from vsa_search.vision import features, regions

    for fn in (captioning.caption_photos, captioning.region_captions, captioning.caption_regions_of,
               constrained.constrained_beam, constrained.caption_with_concepts, decode_np.beam_candidates,
               decode_np.generate_candidates):
        assert defaults(fn)["beam"] == config.DEFAULT_BEAM, fn.__qualname__
    assert defaults(cli_features.extract_cmd)["batch_size"] == regions.EXTRACT_BATCH
    assert defaults(regions.extract)["batch_size"] == defaults(features.extract_to_store)["batch_size"] \
        == regions.EXTRACT_BATCH
