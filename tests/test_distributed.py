"""DDP training on CPU (gloo, 2 processes): one step's loss and gradients, and a whole tiny
training run, equal a single process over the concatenated batch."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp

from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS
from vsa_search.models.alignment import build_model, ranking_loss
from vsa_search.train import distributed

WORLD = 2
CASES = {  # name: config changes; dropout 0 so that both runs see the same network
    "brnn-sum": {},
    "brnn-max": {"loss": "max"},
    "global-sum": {"arch": "global", "normalize": True, "margin": 0.2},
    "hybrid-mean": {"arch": "hybrid", "normalize": True, "pool": "mean", "word_relu": False, "margin": 0.2},
}


def _cfg(**kw):
    return dataclasses.replace(EMBED_PRESETS["tiny"], feature_dim=24, hidden=12, word_dim=8, dropout=0.0, **kw)


def _batch(seed: int = 0):
    """A global batch of 7 photos (shards of 4 and 3) with ragged regions and sentence lengths."""
    g = torch.Generator().manual_seed(seed)
    n, r, t = 7, 5, 9
    feats = torch.randn(n, r, 24, generator=g)
    region_mask = torch.ones(n, r, dtype=torch.bool)
    region_mask[2, 3:] = region_mask[5, 2:] = False
    lengths = torch.tensor([3, 9, 4, 2, 6, 5, 1])  # the longest sentence is in rank 0's shard only
    ids = torch.randint(4, 50, (n, t), generator=g) * (torch.arange(t)[None, :] < lengths[:, None])
    return feats, region_mask, ids, lengths, torch.arange(n), torch.arange(n)


def _env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _step_results(rank: int, out: str) -> None:
    world, r, device = distributed.init(torch.device("cpu"))
    assert (world, r) == (WORLD, rank)
    feats, region_mask, ids, lengths, img, sent = _batch()
    results = {}
    for name, kw in CASES.items():
        cfg = _cfg(**kw)
        torch.manual_seed(0)
        model = build_model(cfg, 50)
        enc = distributed.wrap(model, device)
        part = distributed.ranking_loss_part(enc, feats, region_mask, ids, lengths, img, sent, cfg.margin,
                                             hardest=cfg.loss == "max") / len(img)
        (part * world).backward()  # as train_embed does: DDP averages, the parts add up
        results[name] = {"loss": distributed.all_sum(part),
                         "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}
    torch.save(results, f"{out}/rank{rank}.pt")


def _worker(rank: int, port: int, out: str, store: str, cfg, vocab, dataset) -> None:
    """One spawn for both checks (starting Python + torch is the slow part)."""
    from vsa_search.train.embed import train_embed

    _env(rank, port)
    _step_results(rank, out)
    epochs: list = []
    train_embed(store, f"{out}/ddp.pt", cfg, vocab=vocab, dataset=dataset, device="cpu", on_epoch=epochs.append)
    assert bool(epochs) == (rank == 0)  # only rank 0 reports
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


N_TRAIN, N_DEV = 12, 4
RUN = dataclasses.replace(EMBED_PRESETS["tiny"], epochs=2, dropout=0.0, patience=100, batch_size=4)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, flickr_root: Path) -> dict:
    """Random features for a few real Flickr8k photos (the CNN is not what is tested here), and
    one 2-process spawn that writes the DDP step results and a DDP training run into `out`."""
    from vsa_search.data.datasets import load_flickr8k
    from vsa_search.data.vocab import build_flickr8k_vocab
    from vsa_search.vision.features import FeatureStore
    from vsa_search.vision.regions import RegionFeatures

    ds, vocab = load_flickr8k(flickr_root), build_flickr8k_vocab(flickr_root)
    recs = ds.present("train")[:N_TRAIN] + ds.present("dev")[:N_DEV]
    out = tmp_path_factory.mktemp("ddp")
    store = out / "feats"
    rng = np.random.default_rng(0)
    with FeatureStore(store, cfg=REGION_PRESETS["tiny"]) as fs:
        fs.put((r.image_id, RegionFeatures(np.zeros((4, 4), np.int32), rng.standard_normal((4, 1280), np.float32)))
               for r in recs)
    tmp_mp.spawn(_worker, args=(_free_port(), str(out), str(store), RUN, vocab, ds), nprocs=WORLD, join=True)
    return {"out": out, "store": store, "vocab": vocab, "dataset": ds}


def test_ddp_step_equals_single_process_over_the_concatenated_batch(ddp_run: dict) -> None:
    ranks = [torch.load(ddp_run["out"] / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    feats, region_mask, ids, lengths, _, _ = _batch()
    for name, kw in CASES.items():
        cfg = _cfg(**kw)
        torch.manual_seed(0)
        model = build_model(cfg, 50)
        loss = ranking_loss(model(feats, region_mask, ids, lengths), cfg.margin, hardest=cfg.loss == "max") / 7
        loss.backward()
        assert loss.item() > 0.05, name  # a real loss, so that the comparison means something
        for r, res in enumerate(ranks):
            assert res[name]["loss"] == pytest.approx(loss.item(), abs=1e-5), (name, r)
            for k, p in model.named_parameters():
                torch.testing.assert_close(res[name]["grads"][k], p.grad, atol=1e-5, rtol=1e-4,
                                           msg=lambda m, n=name, k=k, r=r: f"{n} rank {r} {k}: {m}")


def test_ddp_training_run_equals_single_process(ddp_run: dict, tmp_path: Path) -> None:
    """2 ranks x batch 4 train exactly like one process with batch 8 (same batches, same steps);
    only rank 0 wrote the model file."""
    from vsa_search.models import checkpoint
    from vsa_search.train.embed import train_embed

    torch.set_num_threads(1)
    single = train_embed(ddp_run["store"], tmp_path / "one.pt", dataclasses.replace(RUN, batch_size=8),
                         vocab=ddp_run["vocab"], dataset=ddp_run["dataset"], device="cpu")
    one, ddp = checkpoint.load(tmp_path / "one.pt"), checkpoint.load(ddp_run["out"] / "ddp.pt")
    hist_one, hist_ddp = one.train_state["history"], ddp.train_state["history"]
    assert [h["epoch"] for h in hist_ddp] == [1, 2] and single.history[0]["loss"] > 0.1
    for a, b in zip(hist_one, hist_ddp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["dev"] == a["dev"]
    assert ddp.metrics["train_photos"] == N_TRAIN and ddp.metrics["dev_photos"] == N_DEV
    for k, w in one.state_dict.items():
        torch.testing.assert_close(ddp.state_dict[k], w, atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in ddp_run["out"].iterdir()) == ["ddp.pt", "feats", "rank0.pt", "rank1.pt"]


def test_shard_splits_a_batch_contiguously() -> None:
    assert [distributed.shard(7, 2, r) for r in range(2)] == [slice(0, 4), slice(4, 7)]
    assert [len(range(10)[distributed.shard(10, 4, r)]) for r in range(4)] == [3, 3, 2, 2]
    assert distributed.world_size() == 1 and distributed.is_main()  # outside torchrun
