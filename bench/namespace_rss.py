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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml


def rss_mib(pid: int) -> float:
    """The process's resident set size in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


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
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "cluster": {"name": "rss", "secret": "rss-bench-secret-0123456789abcdef"},
            "nodes": [{"id": "n1", "host": "127.0.0.1", "port": args.port}],
            "replication": {"n": 1},
            "storage": {"path": tmp + "/data", "sync": False},
            "log": {"level": "warning"},
        }
        (Path(tmp) / "cluster.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": args.tree}
        proc = subprocess.Popen(
            [sys.executable, "-m", "spine", "serve", "--config", f"{tmp}/cluster.yaml",
             "--node", "n1"], cwd=args.tree, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 60
            async with aiohttp.ClientSession() as s:
                while True:
                    try:
                        async with s.get(base + "/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("node did not become ready")
                    await asyncio.sleep(0.2)
            print(json.dumps({"namespaces": 0, "rss_mib": round(rss_mib(proc.pid), 1)}),
                  flush=True)
            done = 0
            while done < args.namespaces:
                nxt = min(args.namespaces, done + args.every)
                await fill(base, done, nxt, 16)
                done = nxt
                print(json.dumps({"namespaces": done, "rss_mib": round(rss_mib(proc.pid), 1)}),
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
