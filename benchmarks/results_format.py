"""How docs/RESULTS.md writes its figures: a markdown table, fixed decimals, a figure with its interval."""

from __future__ import annotations

from collections.abc import Iterable


def table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def f1(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def f2(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def ci(m: dict, key: str) -> str:
    """A figure with its 95% interval when the report has one: 27.7 [25.2–30.5]."""
    v, lohi = m.get(key), m.get(f"{key}_ci")
    if v is None:
        return "–"
    num = f"{v:g}" if key == "medr" else f"{v:.1f}"
    return f"{num} [{lohi[0]:.1f}–{lohi[1]:.1f}]" if lohi and key != "medr" else num
