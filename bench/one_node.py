"""One Spine node started from a source tree for the single-node attack benchmarks
(namespace_rss.py, slow_clients.py): its config, its process, its RSS."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml


def rss_mib(pid: int) -> float:
    """The process's resident set size in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def one_node(tree: str, port: int, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a replication-1 node of the code in `tree` on 127.0.0.1:`port` (no fsync, warnings
    only), wait until /readyz answers 200, yield (process, base URL); stop it by its PID."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "cluster": {"name": name, "secret": f"{name}-bench-secret-0123456789abcdef"},
            "nodes": [{"id": "n1", "host": "127.0.0.1", "port": port}],
            "replication": {"n": 1},
            "storage": {"path": tmp + "/data", "sync": False},
            "log": {"level": "warning"},
        }
        (Path(tmp) / "cluster.yaml").write_text(yaml.safe_dump(cfg))
        # The node imports the code under test, not whatever is installed.
        env = {**os.environ, "PYTHONPATH": tree}
        proc = subprocess.Popen(
            [sys.executable, "-m", "spine", "serve", "--config", f"{tmp}/cluster.yaml",
             "--node", "n1"], cwd=tree, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not _ready(base):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("node did not become ready")
                time.sleep(0.2)
            yield proc, base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
