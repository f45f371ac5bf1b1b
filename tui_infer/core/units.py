"""How sizes are written for people."""

from __future__ import annotations


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover (the loop always returns)
