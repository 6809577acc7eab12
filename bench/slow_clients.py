"""The slow-client attack of issue 14 against one node: RSS, service to a normal client, and how
many slow connections the node closes (2,048 slow-body connections held every slot for 100 s).

Starts one node (default settings, replication 1) from --tree, opens --conns connections from
eight loopback addresses, each sending a request head and the first bytes of a 1,000-byte body,
then nothing. Prints JSON lines: RSS, a normal client's PUT status and latency, and how many
slow connections are still open, every --every seconds for --hold seconds.

    .venv/bin/python bench/slow_clients.py
    .venv/bin/python bench/slow_clients.py --tree /tmp/old --hold 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
from one_node import one_node, rss_mib  # bench/ is on sys.path when run as a script

HEAD = (b"PUT /v1/ns/slow/memories/x HTTP/1.1\r\nHost: spine\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{\"content\": \"")


_watchers: set[asyncio.Task[None]] = set()  # referenced until done (no task left to the GC)


async def slow_connection(port: int, source: str, closed: list[int]) -> asyncio.StreamWriter:
    """Open one connection, send a head and a sliver of body; count it when the node closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(HEAD)
    await writer.drain()

    async def watch() -> None:
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        closed[0] += 1

    _watchers.add(task := asyncio.get_running_loop().create_task(watch()))
    task.add_done_callback(_watchers.discard)
    return writer


async def probe(base: str) -> tuple[int, float]:
    """A normal client's PUT: status and seconds."""
    started = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (aiohttp.ClientSession(timeout=timeout) as s,
                    s.put(f"{base}/v1/ns/fast/memories/a", json={"content": "hi"}) as r):
            await r.read()
            return r.status, time.monotonic() - started
    except (aiohttp.ClientError, TimeoutError):
        return 0, time.monotonic() - started


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--conns", type=int, default=2048)
    ap.add_argument("--hold", type=float, default=40.0)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--port", type=int, default=18941)
    args = ap.parse_args()
    writers: list[asyncio.StreamWriter] = []
    with one_node(args.tree, args.port, "slow") as (proc, base):
        try:
            print(json.dumps({"t": 0, "phase": "before", "rss_mib": round(rss_mib(proc.pid), 1)}),
                  flush=True)
            closed = [0]
            start = time.monotonic()
            for i in range(args.conns):
                writers.append(await slow_connection(args.port, f"127.0.0.{31 + i % 8}", closed))
            elapsed = 0.0
            while elapsed < args.hold:
                await asyncio.sleep(min(args.every, args.hold - elapsed))
                elapsed = time.monotonic() - start
                status, secs = await probe(base)
                print(json.dumps({
                    "t": round(elapsed, 1), "rss_mib": round(rss_mib(proc.pid), 1),
                    "slow_open": args.conns - closed[0], "probe_status": status,
                    "probe_s": round(secs, 3)}), flush=True)
        finally:
            for w in writers:
                w.close()


if __name__ == "__main__":
    asyncio.run(main())
