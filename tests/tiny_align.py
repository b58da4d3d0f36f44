"""A tiny alignment model over a fixed word list: untrained, fast to build, different per seed.
The index, fault and search tests share it; the caption tests its kin on a fine-tuned CNN top's
features, and a tiny caption generator beside it."""

from __future__ import annotations

from pathlib import Path

import torch

from vsa_search.core.config import EMBED_PRESETS, REGION_PRESETS, RegionConfig
from vsa_search.data.vocab import SPECIALS, Vocab
from vsa_search.models.alignment import AlignModel, save_align

TINY = REGION_PRESETS["tiny"]
WORDS = ["a", "dog", "on", "the", "grass", "man", "in", "red", "girl", "water", "two", "is", "running"]


def tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny alignment model (random weights from `seed`) to `path` and return the path."""
    torch.manual_seed(seed)
    vocab = Vocab(list(SPECIALS) + WORDS)
    return save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, TINY, path)


def tiny_top(seed: int = 0) -> dict:
    """A fine-tuned CNN top for the tiny preset (the last stage and the conv head of tiny's map config),
    moved from ImageNet's by a few percent (seeded), as trunk.top_weights names it."""
    from vsa_search.core.config import MAP_PRESETS
    from vsa_search.vision.trunk import CNNTop, top_weights

    top = CNNTop(MAP_PRESETS["tiny"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the weights only: the running BatchNorm statistics stay ImageNet's
        for p in top.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    return top_weights(top)


def tiny_top_model(path: Path, seed: int = 0, top: dict | None = None, vocab: Vocab | None = None,
                   region_cfg: RegionConfig = TINY) -> Path:
    """tiny_model on the features of a moved CNN top (tiny_top(seed), or `top`) over `region_cfg`'s boxes:
    the model file carries the top, its region config names it."""
    import dataclasses

    from vsa_search.core.config import top_id

    w = top if top is not None else tiny_top(seed)
    torch.manual_seed(seed)
    vocab = vocab or Vocab(list(SPECIALS) + WORDS)
    cfg = dataclasses.replace(region_cfg, top=top_id(w))
    return save_align(AlignModel(EMBED_PRESETS["tiny"], len(vocab)).eval(), vocab, cfg, path, top=w)


def tiny_captioner(path: Path, vocab: Vocab, seed: int = 0) -> Path:
    """An untrained tiny caption generator on the tiny preset's (ImageNet) features, its weights large
    enough that its sentences depend on the photo."""
    from vsa_search.core.config import CAPTION_PRESETS
    from vsa_search.models.captioner import Captioner, save_caption

    torch.manual_seed(seed)
    gen = Captioner(CAPTION_PRESETS["tiny"], len(vocab)).eval()
    with torch.no_grad():
        for p in gen.parameters():
            p.normal_(0, 0.3)
    return save_caption(gen, vocab, TINY, path)
