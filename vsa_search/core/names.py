"""File names as text. A name on disk is bytes; Python reads one that is not UTF-8 with each
undecodable byte as a lone surrogate (U+DC80..U+DCFF, PEP 383). That string round-trips to the file
in Python, but it is not valid Unicode: a UTF-8 encoder refuses it and JSON readers (jq, node) turn it
into a path that does not exist. So every text output goes through here:

- for people, `display`: the name with U+FFFD for each byte that is not UTF-8;
- in JSON, `json_ready`: a string field NAME that holds such bytes becomes its `display` text, and
  `NAME_bytes_b64` beside it holds the exact bytes (base64); a list of such strings gets a list
  beside it, with null for the entries that are UTF-8. Fields that are UTF-8 come out unchanged.
- in pipes, raw bytes (`fs_bytes`; `vsa search --paths`)."""

from __future__ import annotations

import base64
import os
from typing import Any

BYTES_SUFFIX = "_bytes_b64"


def fs_bytes(s: str) -> bytes:
    """The exact bytes a name read from the file system stands for."""
    try:
        return os.fsencode(s)
    except UnicodeEncodeError:  # a surrogate no file system decoding makes (e.g. "\\ud800" from JSON)
        return s.encode("utf-8", "surrogatepass")


def is_text(s: str) -> bool:
    """Valid Unicode: encodes as UTF-8 as it is."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display(s: str) -> str:
    """`s` for people: U+FFFD in place of each byte that is not UTF-8."""
    return s if is_text(s) else fs_bytes(s).decode("utf-8", "replace")


def b64(s: str) -> str:
    return base64.b64encode(fs_bytes(s)).decode("ascii")


def from_json(obj: dict[str, Any], field: str) -> bytes:
    """The exact bytes of field `field` of a json_ready object (a client's side of the format)."""
    raw = obj.get(field + BYTES_SUFFIX)
    return base64.b64decode(raw) if raw is not None else obj[field].encode("utf-8")


def json_ready(obj: Any) -> Any:
    """`obj` (dicts, lists, scalars) with every string valid Unicode and no byte lost (module doc)."""
    if isinstance(obj, str):
        return display(obj)
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[Any, Any] = {}
    for k, v in obj.items():
        k = display(k) if isinstance(k, str) else k
        out[k] = json_ready(v)
        if isinstance(v, str) and not is_text(v):
            out[k + BYTES_SUFFIX] = b64(v)
        elif isinstance(v, (list, tuple)) and any(isinstance(x, str) and not is_text(x) for x in v):
            out[k + BYTES_SUFFIX] = [b64(x) if isinstance(x, str) and not is_text(x) else None for x in v]
    return out
