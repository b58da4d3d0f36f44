"""Typed errors. Nothing below `cli/` prints or exits: it raises one of these, and the CLI
turns it into one line on stderr and the exit code named here."""

from __future__ import annotations


class VSAError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 1


class UsageError(VSAError):
    """Bad arguments (empty query, k <= 0, negative beam...)."""

    exit_code = 2


class ImageError(VSAError):
    """A photo that cannot be used."""


class ImageMissingError(ImageError):
    pass


class ImageCorruptError(ImageError):
    """Truncated, corrupt or not an image at all."""


class ImageTooLargeError(ImageError):
    """More pixels than --max-megapixels allows (decompression-bomb guard)."""


class DatasetError(VSAError):
    pass


class ModelError(VSAError):
    """Missing, unreadable, wrong-kind or wrong-version model file."""


class DamagedError(VSAError):
    """A file cut short or changed after it was written (a full disk, a kill, a bad copy)."""


class StoreError(VSAError):
    """Feature store problems: wrong format version, different extractor, unreadable."""


class SearchIndexError(VSAError):
    """Photo (or sentence) index problems: missing index, old format, model mismatch, build lock."""


class QueryError(UsageError):
    """A query with nothing searchable in it (empty, or only unknown words)."""
