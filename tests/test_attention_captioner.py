"""The attention generator (models/attention.py): missing regions get no weight, teacher forcing and
step-by-step decoding agree, beam search and the model file take it as they take the full-frame
generators, it joins an LSTM in an ensemble, starts from a trained LSTM (--init), and trains and
resumes through the caption trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vsa_search.core.config import CAPTION_PRESETS, REGION_PRESETS
from vsa_search.core.errors import ModelError, UsageError
from vsa_search.data.datasets import load_flickr8k
from vsa_search.data.vocab import PAD, START
from vsa_search.models import checkpoint
from vsa_search.models.attention import NEW_PARAMS, AttendCaptioner
from vsa_search.models.beam import beam_candidates, beam_search
from vsa_search.models.captioner import (
    Captioner,
    ensemble_captioners,
    load_caption,
    make_captioner,
    photo_input,
    save_caption,
)
from vsa_search.train.caption import train_caption
from vsa_search.vision.features import extract_to_store
from vsa_search.vision.regions import RegionFeatures

ATT = dataclasses.replace(CAPTION_PRESETS["attend-tiny"], dropout=0.0)
LSTM = dataclasses.replace(CAPTION_PRESETS["tiny"], cell="lstm", dropout=0.0)


def _model(seed: int = 0, vocab_size: int = 40) -> AttendCaptioner:
    torch.manual_seed(seed)
    m = AttendCaptioner(ATT, vocab_size)
    with torch.no_grad():  # trained-looking weights: the zero-started parts would hide the regions
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def _regions(n: int, rows: int, seed: int = 0) -> torch.Tensor:
    """(n, ATT.regions, D) photos with `rows` real region vectors each, the rest zero padding."""
    x = torch.rand(n, ATT.regions, ATT.feature_dim, generator=torch.Generator().manual_seed(seed))
    x[:, rows:] = 0
    return x


def test_missing_regions_get_no_weight_and_change_nothing() -> None:
    m = _model()
    padded = _regions(2, 3)
    with torch.no_grad():
        h, c, p, mask = m.init_state(padded)
        _, alpha = m.attend(h, p, mask)
        assert mask.tolist() == [[True] * 3 + [False] * (ATT.regions - 3)] * 2
        assert torch.all(alpha[:, 3:] == 0) and torch.allclose(alpha.sum(-1), torch.ones(2))
        inputs = torch.tensor([[START, 5, 6], [START, 7, PAD]])
        # The same photos without the padding rows: the same words, the same scores.
        torch.testing.assert_close(m(padded, inputs), m(padded[:, :3], inputs))
        # A real region moves them: the attention reads it.
        other = padded.clone()
        other[:, 2] = torch.rand(2, ATT.feature_dim)
        assert not torch.allclose(m(padded, inputs), m(other, inputs))


def test_teacher_forcing_and_decoding_steps_agree() -> None:
    m = _model()
    feats = _regions(3, 4)
    inputs = torch.tensor([[START, 5, 6, 7], [START, 8, 9, 10], [START, 4, 4, 11]])
    with torch.no_grad():
        whole = m(feats, inputs)
        state = m.init_state(feats)
        for t in range(inputs.shape[1]):
            logits, state = m.step(inputs[:, t], state)
            torch.testing.assert_close(logits, whole[:, t])


def test_beam_search_of_a_batch_is_each_photo_alone() -> None:
    m = _model()
    feats = _regions(4, 5)
    feats[1, 2:] = 0  # photos with different numbers of regions share the batch
    together = beam_candidates(m, feats, beam=3, max_len=6)
    for i in range(len(feats)):
        alone = beam_candidates(m, feats[i:i + 1], beam=3, max_len=6)[0]
        assert [(c.tokens, round(c.logprob, 4)) for c in together[i]] == \
            [(c.tokens, round(c.logprob, 4)) for c in alone]
    # One vector per photo (a lone region, as region captions give) decodes as a one-row photo.
    lone = feats[:, 0]
    assert [c.tokens for c in beam_search(m, lone, beam=3, max_len=6)] == \
        [c.tokens for c in beam_search(m, feats[:, :1], beam=3, max_len=6)]


def test_photo_input_pads_and_cuts_for_attention_only() -> None:
    rf = RegionFeatures(np.zeros((3, 4), np.int32), np.random.rand(3, 1280).astype(np.float32))
    assert photo_input(rf, LSTM).shape == (1280,)
    x = photo_input(rf, ATT)
    assert x.shape == (ATT.regions, 1280) and torch.all(x[3:] == 0)
    assert torch.equal(x[:3], torch.from_numpy(rf.features))
    many = RegionFeatures(np.zeros((9, 4), np.int32), np.random.rand(9, 1280).astype(np.float32))
    assert torch.equal(photo_input(many, ATT), torch.from_numpy(many.features[:ATT.regions]))


def test_the_file_round_trips_with_its_kind(caption_vocab, tmp_path: Path) -> None:
    m = _model(vocab_size=len(caption_vocab))
    path = save_caption(m, caption_vocab, REGION_PRESETS["tiny"], tmp_path / "a.pt", half=True)
    loaded = load_caption(path)
    assert isinstance(loaded.model, AttendCaptioner) and loaded.config == ATT
    assert checkpoint.load(path).format_version == checkpoint.FORMAT_VERSION
    feats = _regions(2, 4)
    want = [c.tokens for c in beam_search(m.half().float(), feats, beam=3, max_len=6)]
    assert [c.tokens for c in beam_search(loaded.model, feats, beam=3, max_len=6)] == want
    ck = checkpoint.load(path)
    ck.config["cell"] = "transformer"
    checkpoint.save(ck, tmp_path / "b.pt")
    with pytest.raises(ModelError, match="does not know"):
        load_caption(tmp_path / "b.pt")


def test_an_ensemble_mixes_attention_and_lstm(caption_vocab, tmp_path: Path) -> None:
    V = len(caption_vocab)
    torch.manual_seed(1)
    lstm = save_caption(Captioner(dataclasses.replace(LSTM, hidden=ATT.hidden, word_dim=ATT.word_dim), V),
                        caption_vocab, REGION_PRESETS["tiny"], tmp_path / "l.pt")
    att = save_caption(_model(vocab_size=V), caption_vocab, REGION_PRESETS["tiny"], tmp_path / "a.pt")
    a, b = load_caption(lstm), load_caption(att)
    ens = ensemble_captioners([a, b])
    assert ens.cfg.member_cells == ("lstm", "attend") and ens.cfg.cell == "attend"
    feats = _regions(3, 4)
    tokens = torch.full((3,), START, dtype=torch.long)
    with torch.no_grad():
        got, _ = ens.step(tokens, ens.init_state(feats))
        pa = torch.softmax(a.model.step(tokens, a.model.init_state(feats[:, 0]))[0], -1)  # the LSTM reads row 0
        pb = torch.softmax(b.model.step(tokens, b.model.init_state(feats))[0], -1)
    torch.testing.assert_close(got.exp(), (pa + pb) / 2, atol=1e-5, rtol=1e-4)
    path = save_caption(ens, caption_vocab, REGION_PRESETS["tiny"], tmp_path / "e.pt")
    e = load_caption(path)
    assert [c.tokens for c in beam_search(e.model, feats, beam=3, max_len=5)] == \
        [c.tokens for c in beam_search(ens, feats, beam=3, max_len=5)]
    wide = load_caption(save_caption(Captioner(dataclasses.replace(LSTM, hidden=24), V), caption_vocab,
                                     REGION_PRESETS["tiny"], tmp_path / "w.pt"))
    with pytest.raises(UsageError, match="another shape"):
        ensemble_captioners([wide, b])


def test_init_from_an_lstm_keeps_its_words_and_starts_attention_at_zero(caption_vocab) -> None:
    V = len(caption_vocab)
    torch.manual_seed(2)
    lstm = Captioner(dataclasses.replace(LSTM, hidden=ATT.hidden, word_dim=ATT.word_dim), V)
    att = make_captioner(ATT, V)
    with pytest.raises(ModelError, match="has no w_p"):  # without `fresh` the new parts are refused
        checkpoint.load_grown(att, lstm.state_dict(), V, "x.pt")
    checkpoint.load_grown(att, lstm.state_dict(), V, "x.pt", fresh=NEW_PARAMS)
    for k in ("embed.weight", "w_hx.weight", "w_hh.weight", "w_oh.weight"):
        assert torch.equal(att.state_dict()[k], lstm.state_dict()[k])
    # Zero context and zero initial state: the first word is the LSTM's without its image bias.
    tokens = torch.full((2,), START, dtype=torch.long)
    with torch.no_grad():
        got, _ = att.eval().step(tokens, att.init_state(_regions(2, 3)))
        h = torch.zeros(2, ATT.hidden)
        want, _ = lstm.eval().step(tokens, (h, h.clone(), torch.zeros(2, 4 * ATT.hidden)))
    torch.testing.assert_close(got, want)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path, tiny_region_encoder) -> Path:
    ds = load_flickr8k(flickr_root)
    photos = ds.present("train")[:8] + ds.present("dev")[:3]
    out = tmp_path_factory.mktemp("att") / "store"
    extract_to_store({r.image_id: r.path for r in photos}, out, REGION_PRESETS["tiny"], encoder=tiny_region_encoder)
    return out


def test_the_caption_trainer_trains_and_resumes_it(tiny_store: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CAPTION_PRESETS["attend-tiny"], epochs=2, lr=3e-3, lr_decay=0.5, select="cider")
    clean = train_caption(tiny_store, tmp_path / "c.pt", cfg)
    assert clean["history"][-1]["train_loss"] < clean["history"][0]["train_loss"]
    train_caption(tiny_store, tmp_path / "r.pt", dataclasses.replace(cfg, epochs=1))
    resumed = train_caption(tiny_store, tmp_path / "r.pt", cfg, resume=True)
    for a, b in zip(resumed["history"], clean["history"]):  # the decayed rate too is a function of the epoch
        assert (a["train_loss"], a["dev_ppl"]) == pytest.approx((b["train_loss"], b["dev_ppl"]), rel=1e-5)
    loaded = load_caption(tmp_path / "c.pt")
    assert isinstance(loaded.model, AttendCaptioner)
    with pytest.raises(UsageError, match="reads all of a photo's regions"):
        train_caption(tiny_store, tmp_path / "s.pt", cfg, regions=tmp_path / "snippets.jsonl")


def test_caption_and_eval_commands_take_it(tiny_store: Path, caption_vocab, sample_photos: list[Path],
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from vsa_search.cli import app
    from vsa_search.evaluation import metrics
    from vsa_search.evaluation.captions import evaluate_captions
    from vsa_search.vision.features import FeatureStore

    path = save_caption(_model(vocab_size=len(caption_vocab)), caption_vocab, REGION_PRESETS["tiny"],
                        tmp_path / "att.pt")
    monkeypatch.setattr(metrics, "_meteor", lambda gts, res: (None, "METEOR not run in tests"))
    res = evaluate_captions(path, tiny_store, split="dev", beam=2)
    recs = [r for r in load_flickr8k().present("dev") if r.image_id in {c["image"] for c in res["captions"]}]
    with FeatureStore(tiny_store, readonly=True) as s:  # the evaluation decodes every region of each photo
        x = torch.stack([photo_input(s.get(r.image_id), ATT) for r in recs])
    want = {r.image_id: " ".join(caption_vocab.decode(c.tokens))
            for r, c in zip(recs, beam_search(load_caption(path).model, x, beam=2, max_len=ATT.max_len))}
    assert {c["image"]: c["model"] for c in res["captions"]} == want
    r = CliRunner().invoke(app, ["caption", str(sample_photos[0]), "--model", str(path), "--beam", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["caption"]
