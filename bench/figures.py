"""What every plot module shares: distinct colours and the atomic save."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt
from mtlbench.bench.files import atomic


def colors(count: int) -> list:
    """One distinct colour per recipe (matplotlib's default cycle repeats after ten)."""
    if count <= 10:
        return list(plt.get_cmap("tab10").colors)[:count]
    if count <= 20:
        return list(plt.get_cmap("tab20").colors)[:count]
    return [plt.get_cmap("turbo")(i / (count - 1)) for i in range(count)]


def save(fig, path: Path) -> Path:
    """Rendered to a temporary file beside `path`, then renamed: no half-written PNG."""
    try:
        with atomic(path, suffix=".png") as temporary:
            fig.savefig(temporary, dpi=120)
    finally:
        plt.close(fig)
    return path
