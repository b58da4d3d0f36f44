"""The alignment score S_kl and the ranking loss against naive references."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vsa_search.core.config import EMBED_PRESETS
from vsa_search.models.alignment import GlobalModel, build_model, ranking_loss
from vsa_search.models.score import score


def naive_score(v, region_mask, s, word_mask):
    out = torch.zeros(v.shape[0], s.shape[0], dtype=torch.float64)
    for k in range(v.shape[0]):
        for m in range(s.shape[0]):
            total = 0.0
            for t in range(s.shape[1]):
                if not word_mask[m, t]:
                    continue
                total += max(float(v[k, i] @ s[m, t]) for i in range(v.shape[1]) if region_mask[k, i])
            out[k, m] = total
    return out


def test_score_equals_naive_loop_with_masks():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 5, 8, generator=g, dtype=torch.float64)
    s = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    region_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 0, 0]]).bool()
    word_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    got = score(v, region_mask, s, word_mask)
    assert got.shape == (4, 3)
    assert torch.allclose(got, naive_score(v, region_mask, s, word_mask))


def test_loss_zero_when_every_margin_holds_positive_otherwise():
    good = torch.tensor([[5.0, 1.0, 0.0], [0.5, 4.0, 2.0], [1.0, 1.5, 3.5]])  # diag beats all by >= 1.5
    assert float(ranking_loss(good, margin=1.0)) == 0.0
    assert float(ranking_loss(good, margin=1.0, hardest=True)) == 0.0
    bad = good.clone()
    bad[0, 1] = 4.5  # image 0 now nearly prefers sentence 1; sentence 1 nearly prefers image 0
    loss = ranking_loss(bad, margin=1.0)
    # violations: row 0 (4.5 - 5 + 1 = 0.5), column 1 (4.5 - 4 + 1 = 1.5)
    assert torch.isclose(loss, torch.tensor(2.0))
    assert torch.isclose(ranking_loss(bad, margin=1.0, hardest=True), torch.tensor(2.0))
    assert float(ranking_loss(good, margin=3.0)) > 0


def test_sum_and_hardest_differ_with_several_violations():
    scores = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert float(ranking_loss(scores, margin=1.0)) == 12.0  # 6 off-diagonal pairs, both directions
    assert float(ranking_loss(scores, margin=1.0, hardest=True)) == 6.0


def test_global_model_score_is_cosine_of_mean_word_vector():
    cfg = EMBED_PRESETS["tiny"].__class__(**{**EMBED_PRESETS["tiny"].__dict__, "arch": "global",
                                             "normalize": True, "dropout": 0.0})
    torch.manual_seed(0)
    m = build_model(cfg, 20).eval()
    assert isinstance(m, GlobalModel)
    feats = torch.randn(2, 3, cfg.feature_dim)
    ids = torch.tensor([[4, 5, 6], [7, 8, 0]])
    lengths = torch.tensor([3, 2])
    got = m(feats, torch.ones(2, 3, dtype=torch.bool), ids, lengths)
    v = torch.nn.functional.normalize(m.image(feats[:, 0]), dim=-1)
    mean = torch.stack([m.proj(m.embed(ids[i, : lengths[i]])).mean(0) for i in range(2)])
    want = v @ torch.nn.functional.normalize(mean, dim=-1).T
    assert torch.allclose(got, want, atol=1e-5)


def test_mean_pool_removes_length_scaling():
    cfg = EMBED_PRESETS["tiny"].__class__(**{**EMBED_PRESETS["tiny"].__dict__, "pool": "mean", "dropout": 0.0})
    torch.manual_seed(0)
    m = build_model(cfg, 20).eval()
    ids = torch.tensor([[4, 5, 6, 7]])
    s_mean = m.encode_words(ids, torch.tensor([4]))
    s_sum = m.sentence(ids, torch.tensor([4]))
    assert torch.allclose(s_mean * 4, s_sum, atol=1e-6)


def test_hybrid_score_is_alignment_plus_global():
    cfg = dataclasses.replace(EMBED_PRESETS["tiny"], arch="hybrid", normalize=True, pool="mean", dropout=0.0)
    torch.manual_seed(0)
    m = build_model(cfg, 20).eval()
    feats = torch.randn(3, 4, cfg.feature_dim)
    region_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    ids = torch.tensor([[4, 5, 6], [7, 8, 0]])
    lengths = torch.tensor([3, 2])
    word_mask = ids > 0
    got = m(feats, region_mask, ids, lengths)
    h = cfg.hidden
    v, s = m.encode_regions(feats), m.encode_words(ids, lengths)
    assert v.shape == (3, 4, 2 * h) and s.shape == (2, 3, 2 * h) and m.out_dim == 2 * h
    align = score(v[..., :h], region_mask, s[..., :h], word_mask)
    glob = m.glob(feats, region_mask, ids, lengths)
    assert torch.allclose(got, align + glob, atol=1e-5)


def test_l2_feature_norm_ignores_feature_scale_and_mlp_changes_shape_not_api():
    from vsa_search.models.encoders import ImageEncoder

    torch.manual_seed(0)
    enc = ImageEncoder(12, 8, dropout=0.0, feat_norm="l2").eval()
    f = torch.rand(2, 3, 12) + 0.1
    assert torch.allclose(enc(f), enc(7.0 * f), atol=1e-5)
    plain = ImageEncoder(12, 8, dropout=0.0).eval()
    assert not torch.allclose(plain(f), plain(7.0 * f))
    cfg = dataclasses.replace(EMBED_PRESETS["tiny"], arch="hybrid", normalize=True, image_mlp=20, feature_dim=12)
    m = build_model(cfg, 30).eval()
    assert m.image.mlp is not None and m.encode_regions(f).shape == (2, 3, m.out_dim)


def test_old_config_without_new_fields_loads_with_paper_defaults():
    from vsa_search.core.config import EmbedConfig, from_dict, to_dict

    old = {k: v for k, v in to_dict(EMBED_PRESETS["default"]).items()
           if k not in ("feat_norm", "image_mlp", "text_pretrain", "text_pretrain_lr")}
    cfg = from_dict(EmbedConfig, old)
    assert (cfg.feat_norm, cfg.image_mlp, cfg.text_pretrain) == ("none", 0, 0)
    assert build_model(cfg, 30).image.mlp is None


def test_ensemble_score_is_base_plus_each_global_member(tmp_path):
    from vsa_search.core.config import REGION_PRESETS
    from vsa_search.core.errors import ModelError, UsageError
    from vsa_search.data.vocab import Vocab
    from vsa_search.models.alignment import ensemble_align, load_align, save_align

    vocab = Vocab.build([["a", "dog", "runs"], ["a", "cat", "sits"]], min_count=1)
    base_cfg = dataclasses.replace(EMBED_PRESETS["tiny"], arch="hybrid", normalize=True, pool="mean",
                                   word_relu=False, feature_dim=12)
    paths = []
    for seed, cfg in enumerate([base_cfg, dataclasses.replace(base_cfg, arch="global"),
                                dataclasses.replace(base_cfg, arch="global")]):
        torch.manual_seed(seed)
        paths.append(save_align(build_model(cfg, len(vocab)), vocab, REGION_PRESETS["tiny"], tmp_path / f"{seed}.pt"))
    base, *members = [load_align(p) for p in paths]
    ens = ensemble_align(base, members)
    assert ens.cfg.global_members == 3 and ens.out_dim == 4 * base_cfg.hidden
    g = torch.Generator().manual_seed(0)
    feats, mask = torch.randn(3, 4, 12, generator=g), torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2:] = False
    ids, lengths = torch.tensor([[4, 5, 6], [4, 7, 0]]), torch.tensor([3, 2])
    want = sum(m.model(feats, mask, ids, lengths) for m in (base, *members))
    assert torch.allclose(ens(feats, mask, ids, lengths), want, atol=1e-5)
    # Split by member (an ensemble trained on each member's own loss), each part is that member's score.
    ens.eval()
    parts = ens.member_scores(feats, mask, ids, lengths)
    assert len(parts) == 3
    for got, m in zip(parts, (base, *members)):
        assert torch.allclose(got, m.model(feats, mask, ids, lengths), atol=1e-5)
    # The loss an ensemble trains on: of its summed score, or each member's own, summed.
    from vsa_search.models.alignment import model_loss, ranking_loss

    f3, m3, i3, l3 = feats[:2], mask[:2], ids, lengths  # 2 photos, 2 sentences: a batch of true pairs
    whole = model_loss(ens, f3, m3, i3, l3, 0.2)
    assert torch.allclose(whole, ranking_loss(ens(f3, m3, i3, l3), 0.2))
    ens.cfg = dataclasses.replace(ens.cfg, ensemble_loss="members")
    each = model_loss(ens, f3, m3, i3, l3, 0.2)
    assert torch.allclose(each, sum(ranking_loss(m.model(f3, m3, i3, l3), 0.2) for m in (base, *members)))
    assert not torch.allclose(each, whole)
    ens.cfg = dataclasses.replace(ens.cfg, ensemble_loss="whole")
    # Saved and loaded, it is still the same model (the config says how many members).
    again = load_align(save_align(ens, vocab, REGION_PRESETS["tiny"], tmp_path / "ens.pt"))
    assert torch.allclose(again.model(feats, mask, ids, lengths), want, atol=1e-5)
    # Taken apart again (vsa train ensemble-part), each part scores as the model it was made of.
    from vsa_search.models.alignment import ensemble_parts
    from vsa_search.train.ensemble import write_align_part

    for k, (got, m) in enumerate(zip(ensemble_parts(again), (base, *members), strict=True)):
        assert torch.allclose(got(feats, mask, ids, lengths), m.model(feats, mask, ids, lengths), atol=1e-5)
        part = load_align(write_align_part(tmp_path / "ens.pt", k, tmp_path / f"part{k}.pt")["model"])
        assert part.config.arch == m.config.arch  # float16 in the file
        assert torch.allclose(part.model(feats, mask, ids, lengths), m.model(feats, mask, ids, lengths), atol=2e-2)
    with pytest.raises(UsageError, match="parts 0"):
        write_align_part(tmp_path / "ens.pt", 3, tmp_path / "x.pt")
    with pytest.raises(ModelError, match="not an ensemble"):
        ensemble_parts(base)
    with pytest.raises(ModelError):
        ensemble_align(members[0], [base])
