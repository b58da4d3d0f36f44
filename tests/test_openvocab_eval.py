"""Recall scoring with the bridge inside S_kl: weight 0 is the model's own score, and the bridge
moves only sentences that hold a word with a bridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsa_search.bridge.words import word_weights
from vsa_search.core.config import EMBED_PRESETS
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.evaluation import openvocab as openvocab_eval
from vsa_search.evaluation.recall import RetrievalData, score_all
from vsa_search.models.alignment import AlignModel

WORDS = ["a", "dog", "on", "the", "grass", "pizza"]


@pytest.mark.parametrize("arch", ["brnn", "hybrid"])
def test_weight_zero_is_the_models_score_and_only_bridged_sentences_move(arch: str) -> None:
    import dataclasses

    torch.manual_seed(0)
    vocab = Vocab(list(SPECIALS) + WORDS)
    cfg = dataclasses.replace(EMBED_PRESETS["tiny"], feature_dim=1280, arch=arch, pool="mean")
    model = AlignModel(cfg, len(vocab)).eval()
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(np.abs(rng.normal(size=(3, 4, 1280))).astype(np.float32) * 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    sentences = ["a dog on the grass", "a pizza", "a on the", "a pizza on the grass"]
    enc = [vocab.encode_text(s) for s in sentences]
    lengths = torch.tensor([len(e) for e in enc])
    ids = torch.zeros(len(enc), int(lengths.max()), dtype=torch.long)
    for j, e in enumerate(enc):
        ids[j, : len(e)] = torch.tensor(e)
    data = RetrievalData(["x", "y", "z"], feats, mask, ids, lengths, torch.tensor([0, 1, 2, 0]), sentences)
    got = openvocab_eval.scores_with_bridge(model, data, (0.0, 5.0), chunk=2)
    torch.testing.assert_close(got[0.0], score_all(model, data), rtol=1e-5, atol=1e-5)
    moved = ((got[5.0] - got[0.0]).abs() > 1e-6).any(0).tolist()  # per sentence
    bridges = [bool(word_weights(s.split()).any()) for s in sentences]
    assert bridges[1] and not bridges[2]  # "pizza" names a class; function words never bridge
    assert not moved[2]
    assert all(b or not m for m, b in zip(moved, bridges))  # a sentence without a bridged word never moves
    assert (got[5.0] >= got[0.0] - 1e-6).all()  # the bridge only adds
