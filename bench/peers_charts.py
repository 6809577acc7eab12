"""PNG charts of a bench/peers.py run: ops/s per shape (one panel per shape, one bar per
system) and the latency CDF of every shape whose requests the Python client timed one by one
(search, and batch ingest calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"spine": "#1f77b4", "etcd": "#ff7f0e", "redis": "#d62728", "chroma": "#2ca02c"}


def _color(system: str) -> str:
    return COLORS.get(system.split()[0], "#7f7f7f")


def draw(rows: list[dict[str, Any]], cdf: dict[str, list[float]], stem: Path) -> list[Path]:
    """Write `<stem>-throughput.png` and, with timed requests, `<stem>-latency-cdf.png`."""
    out = []
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    cols = min(3, len(shapes))
    nrows = -(-len(shapes) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, shape in zip(axes.flat, shapes, strict=False):
        rs = [r for r in rows if r["shape"] == shape and r["ops_per_s"]]
        labels = [r["system"] for r in rs]
        vals = [r["ops_per_s"] for r in rs]
        bars = ax.bar(range(len(rs)), vals, color=[_color(x) for x in labels])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7)
        ax.set_xticks(range(len(rs)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(shape, fontsize=9)
        ax.set_ylabel("records/s" if shape.startswith("batch") else "ops/s", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    fig.suptitle("Spine and peers on one box, same run (higher is better)", fontsize=10)
    fig.tight_layout()
    path = Path(f"{stem}-throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)

    timed = {k: v for k, v in cdf.items() if v}
    if timed:
        kinds = list(dict.fromkeys(k.rsplit(" ", 1)[0] for k in timed))
        cols = min(2, len(kinds))
        nrows = -(-len(kinds) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
        for ax in list(axes.flat)[len(kinds):]:
            ax.axis("off")
        for ax, kind in zip(axes.flat, kinds, strict=False):
            for key, lat in timed.items():
                if key.rsplit(" ", 1)[0] != kind:
                    continue
                system = key.rsplit(" ", 1)[1]
                xs = sorted(x * 1000 for x in lat)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=system, color=_color(system))
            ax.set_xscale("log")
            ax.set_xlabel("latency, ms (log)", fontsize=8)
            ax.set_ylabel("fraction of requests", fontsize=8)
            ax.set_title(kind + (" (one 1,000-item call)" if kind.startswith("batch") else ""),
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(f"{stem}-latency-cdf.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out
