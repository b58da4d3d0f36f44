"""Word vocabulary with fixed special-token ids; it serialises to plain JSON so that it can
travel inside model files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ModelError
from .datasets import Dataset, load_flickr8k
from .text import tokenize

if TYPE_CHECKING:  # torch only for pad_ids: search encodes its words without it
    import torch

PAD, UNK, START, END = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<start>", "<end>")


class Vocab:
    """Index <-> word mapping. Ids 0..3 are always <pad>, <unk>, <start>, <end>."""

    def __init__(self, itos: list[str], min_count: int = 5) -> None:
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise ModelError(f"vocabulary must start with {list(SPECIALS)}, got {itos[:4]}")
        if len(set(itos)) != len(itos):
            raise ModelError("vocabulary has duplicate words")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.min_count: int = min_count

    @classmethod
    def build(cls, token_lists: Iterable[list[str]], min_count: int = 5) -> Vocab:
        """Words seen at least `min_count` times, most frequent first, ties alphabetical."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        # A caption word that looks like a special token must not get a second id.
        words = [w for w, n in counts.items() if n >= min_count and w not in SPECIALS]
        # Sorting on (-count, word) makes the ids independent of input order and hash seeds.
        words.sort(key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + words, min_count=min_count)

    def extend(self, token_lists: Iterable[list[str]], min_count: int | None = None) -> Vocab:
        """This vocabulary plus the words of `token_lists` seen at least `min_count` times (default:
        this vocabulary's) that it lacks, appended in build() order: every existing word keeps its id,
        so a model trained on this vocabulary can grow its word tables (models.checkpoint.grow_rows)."""
        new = Vocab.build(token_lists, self.min_count if min_count is None else min_count)
        return Vocab(self.itos + [w for w in new.itos[len(SPECIALS):] if w not in self.stoi], self.min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.itos == other.itos and self.min_count == other.min_count

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries, min_count={self.min_count})"

    def encode(self, tokens: list[str]) -> list[int]:
        """Token ids; unknown words map to UNK. No START/END is added."""
        return [self.stoi.get(t, UNK) for t in tokens]

    def encode_text(self, sentence: str) -> list[int]:
        return self.encode(tokenize(sentence))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first END; PAD and START are dropped, UNK shows as "<unk>"."""
        out: list[str] = []
        for i in ids:
            i = int(i)  # accept numpy/torch integer scalars
            if i == END:
                break
            if i in (PAD, START):
                continue
            if not 0 <= i < len(self.itos):
                raise ModelError(f"token id {i} is outside the vocabulary (size {len(self.itos)})")
            out.append(self.itos[i])
        return out

    def known(self, tokens: list[str]) -> list[bool]:
        return [t in self.stoi for t in tokens]

    def unk_rate(self, token_lists: Iterable[list[str]]) -> float:
        """Fraction of all tokens that are out of vocabulary (0.0 when there are no tokens)."""
        total = unknown = 0
        for tokens in token_lists:
            total += len(tokens)
            unknown += sum(1 for t in tokens if t not in self.stoi)
        return unknown / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"itos": list(self.itos), "min_count": self.min_count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        try:
            itos, min_count = d["itos"], d["min_count"]
        except (KeyError, TypeError) as e:
            raise ModelError(f"vocabulary record lacks 'itos'/'min_count': {e}") from None
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise ModelError("vocabulary 'itos' must be a list of strings")
        return cls(itos, min_count=int(min_count))


def train_tokens(dataset: Dataset) -> Iterable[list[str]]:
    """The tokenised captions of every training-split photo of `dataset`, on disk or not."""
    return (tokenize(s) for r in dataset.split("train") for s in r.sentences)


def build_vocab(dataset: Dataset, min_count: int = 5, base: Vocab | None = None) -> Vocab:
    """Vocabulary from the captions of the training split of any data set (Flickr8k, COCO, Karpathy
    JSON); with `base`, that vocabulary extended by the training words it lacks (Vocab.extend).
    Dev/test captions are never read, so no evaluation word leaks into the model."""
    if base is not None:
        return base.extend(train_tokens(dataset), min_count)
    return Vocab.build(train_tokens(dataset), min_count=min_count)


def build_flickr8k_vocab(root: Path | None = None, min_count: int = 5) -> Vocab:
    """Vocabulary from the captions of all 6,000 Flickr8k training-split photos (build_vocab)."""
    return build_vocab(load_flickr8k(root), min_count)


def pad_ids(seqs: list[list[int]], min_length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-id lists as one batch: ids (B, T) long, PAD-filled, T the longest length; lengths (B,)
    long, each at least `min_length` (an empty sentence then reads as that many PADs)."""
    import torch

    lengths = torch.tensor([max(min_length, len(s)) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths
