"""Multi-process training (`torchrun --nproc-per-node N -m vsa_search train embed ...`).

Each of the N processes (ranks) takes a contiguous shard of every global batch of N x batch_size
photos. The ranking loss needs every photo's negatives, so each rank gathers the region and word
vectors of all ranks and scores its own photos against every sentence and its own sentences against
every photo: the rows and columns of the global (N*B, N*B) score matrix that it owns. Summed over
ranks these parts are exactly the single-process loss over the concatenated batch, and so are the
gradients (see `all_gather_with_grad`). Outside torchrun (WORLD_SIZE unset or 1) everything here
is a no-op and training is the plain single-process loop (OneProcess)."""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core.errors import UsageError
from ..models.alignment import hinge_loss, model_loss, trains_members
from ..models.score import score, word_mask

_owned = False  # True when init() created the process group (so cleanup() must destroy it)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 writes checkpoints, prints progress and evaluates; a lone process is rank 0."""
    return rank() == 0


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the torchrun job that RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) describe:
    backend nccl on CUDA, gloo on CPU. Returns (world, rank, device): on CUDA each rank gets
    cuda:LOCAL_RANK. A lone process (WORLD_SIZE unset or 1) returns (1, 0, device) untouched."""
    global _owned
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return 1, 0, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {device.index}: only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Once per process: re-creating a group on the same MASTER_PORT races with the old store,
        # so later calls (a second train_embed) reuse it and it is destroyed at exit.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        _owned = True
        atexit.register(cleanup)
    return dist.get_world_size(), dist.get_rank(), device


def barrier() -> None:
    """Wait for every rank (no-op for a lone process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if init() created it (a caller's own group is left alone); runs
    at exit by itself."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """rank `src`'s `obj` on every rank (picklable objects: dev metrics, stop decisions)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(x: torch.Tensor) -> float:
    """The sum over ranks of a scalar tensor, as a float (for reporting the global loss)."""
    t = x.detach().float().reshape(1).clone()
    dist.all_reduce(t)
    return float(t)


class _Gather(torch.autograd.Function):
    """all_gather of tensors whose first dims (`sizes`, one per rank) may differ. The backward sums
    the gradient that every rank's loss sent to each slice and hands the owner its slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        r, n = dist.get_rank(), max(sizes)
        ctx.sizes, ctx.rank = sizes, r
        padded = torch.cat([x, x.new_zeros((n - x.shape[0], *x.shape[1:]))]).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        sizes, r = ctx.sizes, ctx.rank
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # gloo has no reduce_scatter; the tensor is small (N*B vectors)
        start = sum(sizes[:r])
        return grad[start : start + sizes[r]], None


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Every rank's `x` concatenated in rank order: (sum(sizes), ...). `sizes` gives each rank's
    first dim (default: all equal to x's). The local slice keeps its gradient, and the backward
    also routes to it the gradients that the other ranks' losses put on their copies of it: each
    rank may then compute only its own part of a loss (its rows and columns of the score matrix)
    and still get the exact gradient of the global loss. (Detaching the copies instead, as some
    contrastive trainers do, is exact only if every rank computes the whole N*B x N*B loss.)"""
    if world_size() <= 1:
        return x
    return _Gather.apply(x, sizes or [x.shape[0]] * world_size())


def shard(n: int, world: int, r: int) -> slice:
    """Rank r's contiguous share of a global batch of n items (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


class Encoders(nn.Module):
    """What DDP wraps: one forward that runs both halves of an alignment model (DDP syncs the
    gradients of parameters used in its forward, so the halves must not be called around it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.encode_regions(feats), self.model.encode_words(ids, lengths)  # (B, R', h), (B, T, h)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model's encoders under DistributedDataParallel (rank 0's weights are broadcast)."""
    return DistributedDataParallel(Encoders(model), device_ids=[device.index] if device.type == "cuda" else None)


def ranking_loss_part(encoders: nn.Module, feats: torch.Tensor, region_mask: torch.Tensor, ids: torch.Tensor,
                      lengths: torch.Tensor, img: torch.Tensor, sent: torch.Tensor, margin: float,
                      hardest: bool = False) -> torch.Tensor:
    """This rank's part of alignment.ranking_loss over one global batch: photos `img` (G,) with
    their sentences `sent` (G,) (indices into feats (N, R, D), region_mask (N, R), ids (M, T),
    lengths (M,), which every rank holds whole). The rank encodes only its shard, gathers every
    rank's vectors, and sums the hinge costs of its photos' rows and its sentences' columns of the
    (G, G) score matrix. Summed over ranks this is ranking_loss(scores) exactly (not divided by G)."""
    world, r = world_size(), rank()
    g = len(img)
    sizes = [len(range(g)[shard(g, world, k)]) for k in range(world)]
    mine = shard(g, world, r)
    t_max = int(lengths[sent].max())  # the global batch's: every rank pads its words alike
    v, s = encoders(feats[img[mine]], ids[sent[mine], :t_max], lengths[sent[mine]])  # (b, R', h), (b, T, h)
    n_reg = v.shape[1]
    # One collective for both halves, in float32 (under autocast too) so that the gradients summed
    # across ranks keep their precision.
    both = all_gather_with_grad(torch.cat([v, s], dim=1).float(), sizes)
    v_all, s_all = both[:, :n_reg], both[:, n_reg:]  # (G, R', h), (G, T, h)
    rmask = region_mask[img, :n_reg]  # (G, R')
    wmask = word_mask(lengths[sent], t_max)  # (G, T)
    rows = score(v, rmask[mine], s_all, wmask).float()  # (b, G): my photos vs every sentence
    cols = score(v_all, rmask, s, wmask[mine]).float()  # (G, b): every photo vs my sentences
    k = torch.arange(mine.stop - mine.start, device=rows.device)
    own_r = torch.zeros_like(rows, dtype=torch.bool)
    own_r[k, mine.start + k] = True  # the true pairs
    return hinge_loss(rows, own_r, cols, own_r.T, margin, hardest)


# --------------------------------------------------------------------------- what an epoch asks of the ranks


class OneProcess:
    """What the alignment trainer's epoch asks of the processes that train together, for a lone
    process: the step's loss, the batch order, the sum of the losses and rank 0's verdicts."""

    world, rank = 1, 0

    def __init__(self, model: nn.Module):
        self.model = model

    def ranking_loss(self, data: Any, img: torch.Tensor, sent: torch.Tensor, margin: float,
                     hardest: bool) -> torch.Tensor:
        """The batch's ranking loss (not divided by its size): photos `img`, their sentences `sent`
        (indices into `data`: feats, region_mask, ids, lengths on the model's device)."""
        t_max = int(data.lengths[sent].max())
        return model_loss(self.model, data.feats[img], data.region_mask[img], data.ids[sent, :t_max],
                          data.lengths[sent], margin, hardest)

    def batch_generator(self) -> torch.Generator | None:
        return None  # the global generator, which the epoch seeded

    def sum(self, loss: torch.Tensor) -> float:
        return loss.item()

    def share(self, obj: Any) -> Any:
        return obj


class Ranks(OneProcess):
    """The same under torchrun: the model's encoders under DDP, each rank's part of the loss of the
    global batch, and rank 0's objects broadcast to every rank."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__(model)
        if getattr(model, "cfg", None) is not None and trains_members(model.cfg):
            raise UsageError("an ensemble trained on each member's own loss trains in one process (not torchrun)")
        self.world, self.rank = world_size(), rank()
        self.encoders = wrap(model, device)

    def ranking_loss(self, data: Any, img: torch.Tensor, sent: torch.Tensor, margin: float,
                     hardest: bool) -> torch.Tensor:
        return ranking_loss_part(self.encoders, data.feats, data.region_mask, data.ids, data.lengths, img, sent,
                                 margin, hardest=hardest)

    def batch_generator(self) -> torch.Generator | None:
        # Ranks must draw the same global batches whatever their dropout drew: a generator of their own.
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        return gen

    def sum(self, loss: torch.Tensor) -> float:
        return all_sum(loss)

    def share(self, obj: Any) -> Any:
        return broadcast_object(obj)


def processes(model: nn.Module, device: torch.device) -> OneProcess:
    """Ranks under torchrun (after init()), else OneProcess."""
    return Ranks(model, device) if world_size() > 1 else OneProcess(model)
