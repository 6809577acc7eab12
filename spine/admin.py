"""`spine status` and `spine admin join | decommission | remove`: what the operator sees.

The formatting is pure (views in, text out) so it is tested without a cluster; `watch` polls the
cluster's HTTP API until a ring change settles, drawing a progress bar from every pending owner's
transfer counters.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

_CODES = {"active": "N", "joining": "J", "leaving": "L", "left": "X", "standby": "S"}
EXPECT = {"join": "active", "decommission": "left", "remove": "left"}


def ownership(shards_view: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """node → (shards it owns now, shards it is a pending owner of)."""
    out: dict[str, tuple[int, int]] = {}
    for s in shards_view["shards"]:
        for n in s["preference_list"]:
            own, pend = out.get(n, (0, 0))
            out[n] = (own + 1, pend)
        for n in s["pending"]:
            own, pend = out.get(n, (0, 0))
            out[n] = (own, pend + 1)
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_status(
    cluster: Mapping[str, Any], shards: Mapping[str, Any], records: Mapping[str, float | None]
) -> str:
    """The cluster like `nodetool status`: a two-letter code (Up/Down, then
    Normal/Joining/Leaving/left(X)/Removed/Standby), id, address, records stored, effective
    ownership (shard replicas held / shards, so N×100% is spread over the nodes), pending shards,
    region and zone ('-' where none is configured). A node the operator removed keeps its row,
    marked R, so it is never taken for a member that is merely down."""
    total = len(shards["shards"]) or 1
    owns = ownership(shards)
    ring = shards.get("ring", {})
    wide = max([len("region"), *(len(m.get("region") or "") for m in cluster["members"])]) + 2
    lines = [
        f"Cluster: {cluster.get('cluster')}  (seen from {cluster['node']};"
        f" ring {ring.get('digest')}{', changing' if ring.get('changing') else ''})",
        "Status=Up/Down  State=Normal/Joining/Leaving/X(left)/R(removed)/Standby",
        f"{'--':<4}{'id':<8}{'address':<24}{'records':>10}{'owns':>9}{'pending':>9}"
        f"  {'region':<{wide}}zone",
    ]
    for m in cluster["members"]:
        state = "R" if m.get("removed") else _CODES.get(m["state"], "?")
        code = ("U" if m.get("alive", True) else "D") + state
        own, pend = owns.get(m["id"], (0, 0))
        rec = records.get(m["id"])
        lines.append(
            f"{code:<4}{m['id']:<8}{m['address'] or '-':<24}"
            f"{'?' if rec is None else int(rec):>10}{100 * own / total:>8.1f}%"
            f"{pend:>9}  {m.get('region') or '-':<{wide}}{m.get('zone') or '-'}")
    return "\n".join(lines)


def progress_line(statuses: Sequence[Mapping[str, Any]], elapsed: float, width: int = 30) -> str:
    """One line for the transfers of a ring change: bar, shards copied, records, bytes."""
    total = sum(int(s.get("shards", 0)) for s in statuses)
    copied = sum(int(s.get("copied", 0)) for s in statuses)
    records = sum(int(s.get("records", 0)) for s in statuses)
    size = sum(int(s.get("bytes", 0)) for s in statuses)
    frac = copied / total if total else 1.0
    filled = round(frac * width)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] " if width > 0 else ""
    return (f"{bar}{copied}/{total} shards"
            f"  {records} records  {_size(size)}  {elapsed:.0f}s")


def watch(
    get: Callable[[str, str], Any],
    urls: Callable[[], dict[str, str]],
    node: str,
    action: str,
    *,
    timeout: float,
    out: TextIO = sys.stderr,
    interval: float = 0.5,
    bar: bool = True,
) -> bool:
    """Poll until `node` reaches the state `action` leads to and no change is under way,
    printing a progress bar redrawn with \\r when `bar` (`out` is a terminal), else a plain
    line each time the counts change (a log keeps it); whether it got there within `timeout`.

    `get(url, path)` returns decoded JSON (raising on failure); `urls()` maps node → HTTP URL of
    the members that may hold transfers.
    """
    want = EXPECT[action]
    end = "\n" if bar else ""  # ends the bar's line before the verdict
    last = ""  # without a bar: the counts last printed
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        statuses: list[Mapping[str, Any]] = []
        settled = None
        for url in urls().values():
            try:
                view = get(url, "/v1/cluster/shards")
            except Exception:  # a node down or leaving: the others still report
                continue
            statuses.append(view["transfers"])
            if settled is None:
                members = {m["id"]: m["state"] for m in get(url, "/v1/cluster")["members"]}
                settled = not view["ring"]["changing"] and members.get(node) == want
        if bar:
            out.write("\r" + progress_line(statuses, time.monotonic() - start))
            out.flush()
        elif (counts := progress_line(statuses, 0.0, width=0)) != last:
            out.write(progress_line(statuses, time.monotonic() - start, width=0) + "\n")
            last = counts
        if settled:
            out.write(f"{end}{node} is {want}\n")
            return True
        time.sleep(interval)
    out.write(f"{end}{node} did not become {want} in {timeout:.0f}s\n")
    return False
