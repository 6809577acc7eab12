"""``latency.png``: each operation's latency over time (ok / fail / info) and throughput per
second, with the nemesis's fault windows shaded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jepsen_style.history import pair_ops, windows

TYPE_COLORS = {"ok": "#2a9d46", "fail": "#d62828", "info": "#f4a100"}
FAULT_COLORS = {"partition": "#6c8ebf", "kill": "#b85450", "pause": "#9673a6",
                "skew": "#d6b656"}


def plot_run(
    events: Sequence[Mapping[str, Any]],
    nemesis_events: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "",
) -> None:
    """Write the PNG. ``events``: the history (any number of workloads); ``nemesis_events``:
    the timeline. An operation never completed is drawn at the end of the run as ``info``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ops = pair_ops(events)
    times = [float(e["time"]) for e in events] + [float(e["time"]) for e in nemesis_events]
    end = max(times, default=1.0)
    fig, (ax_lat, ax_tp) = plt.subplots(2, 1, figsize=(13, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2]})
    try:
        # Fault windows.
        seen_faults: dict[str, str] = {}
        for w in windows(nemesis_events):
            color = FAULT_COLORS.get(w.fault, "#999999")
            stop = end if w.stop is None else w.stop
            for ax in (ax_lat, ax_tp):
                ax.axvspan(w.start, stop, color=color, alpha=0.18, lw=0)
            seen_faults[w.fault] = color

        # Latency scatter, one series per completion type.
        handles = []
        for kind in ("ok", "fail", "info"):
            xs, ys = [], []
            for op in ops:
                if op["type"] != kind:
                    continue
                t0 = float(op["invoke"]["time"])
                lat = op["latency"] if op["latency"] is not None else end - t0
                xs.append(t0)
                ys.append(max(float(lat) * 1000.0, 0.01))
            if xs:
                handles.append(ax_lat.scatter(xs, ys, s=4, alpha=0.6, color=TYPE_COLORS[kind],
                                              label=f"{kind} ({len(xs)})", linewidths=0))
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.grid(True, which="both", alpha=0.25)
        legend = [*handles, *(Patch(color=c, alpha=0.35, label=f) for f, c in seen_faults.items())]
        if legend:
            ax_lat.legend(handles=legend, loc="upper right", fontsize=8, markerscale=3)
        if title:
            ax_lat.set_title(title, fontsize=10)

        # Throughput: completions per second by type.
        buckets = max(1, math.ceil(end))
        for kind in ("ok", "fail", "info"):
            counts = [0] * buckets
            for op in ops:
                if op["type"] == kind and op["complete"] is not None:
                    t = float(op["complete"]["time"])
                    counts[min(buckets - 1, max(0, int(t)))] += 1
            if any(counts):
                ax_tp.plot([i + 0.5 for i in range(buckets)], counts, drawstyle="steps-mid",
                           color=TYPE_COLORS[kind], label=kind, lw=1.2)
        ax_tp.set_ylabel("ops / s")
        ax_tp.set_xlabel("time since start (s)")
        ax_tp.set_xlim(0, end)
        ax_tp.grid(True, alpha=0.25)
        if ax_tp.get_legend_handles_labels()[0]:
            ax_tp.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(str(path), dpi=110)
    finally:
        plt.close(fig)
