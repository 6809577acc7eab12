"""RSS of one node holding many namespaces of one record each (issue 14: ~3,200 OOM-killed a node).

Starts one node (replication 1) from the source tree given by --tree, writes one record into each
of --namespaces namespaces, and prints the node's VmRSS at every --every namespaces, as JSON lines.

    .venv/bin/python bench/namespace_rss.py --namespaces 10000 --every 1000
    .venv/bin/python bench/namespace_rss.py --tree /tmp/old --namespaces 2000 --every 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiohttp
from one_node import one_node, rss_mib  # bench/ is on sys.path when run as a script


async def fill(base: str, start: int, stop: int, conc: int) -> None:
    """One record in each namespace start..stop-1."""
    todo = iter(range(start, stop))
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            for i in todo:
                async with s.put(f"{base}/v1/ns/ns{i:05d}/memories/m",
                                 json={"content": f"record of namespace {i}"}) as r:
                    if r.status not in (200, 201):
                        raise RuntimeError(f"ns{i}: {r.status} {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(conc)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--namespaces", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--port", type=int, default=18931)
    args = ap.parse_args()
    with one_node(args.tree, args.port, "rss") as (proc, base):
        print(json.dumps({"namespaces": 0, "rss_mib": round(rss_mib(proc.pid), 1)}),
              flush=True)
        done = 0
        while done < args.namespaces:
            nxt = min(args.namespaces, done + args.every)
            await fill(base, done, nxt, 16)
            done = nxt
            print(json.dumps({"namespaces": done, "rss_mib": round(rss_mib(proc.pid), 1)}),
                  flush=True)


if __name__ == "__main__":
    asyncio.run(main())
