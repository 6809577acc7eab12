#!/usr/bin/env python3
"""Embedder benchmark (issue 16): the Artel-shaped load, and retrieval quality per embedder.

    .venv/bin/python bench/embed_bench.py [--embedder minilm] [--threads 0] [--duration 20]
        [--clients 8] [--base-port 27788]
    .venv/bin/python bench/embed_bench.py --quality      # recall@10 / nDCG@10, µs, RSS

Load: starts `spine up --nodes 3 --no-sync --config F` (F sets embedder.name and, unless 0,
embedder.threads), then --clients concurrent clients PUT ~30-word memories through random nodes
for --duration seconds, then send 5-word queries (k=10) for --duration seconds. Prints writes/s
and searches/s (2xx only; 429s and errors counted apart), p50/p99 latency, the nodes' CPU µs per
write and per search (from /proc: everything a node does, not only the model), each node's RSS,
the threads each node reports in /v1/cluster, and the model's own CPU µs per embedding measured
in this process on one thread (30-word texts and 5-word queries).

Quality: embeds tests/data/paraphrase_corpus.json (80 memories, 40 queries whose answer is a
paraphrase) with hash, minilm-static, minilm, minilm-int8 and, where installed, minilm-torch, and
prints recall@10, nDCG@10, the paraphrase's rank for "a kitten watching sparrows", vector-mode
recall@10 / nDCG@10 on tests/data/retrieval_corpus.json (bench/retrieval.py), the cosine to
minilm's vectors over both corpora's texts (min and mean), CPU µs per embedding and RSS growth.
The box is shared: figures move with whatever else runs (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CORPUS = REPO / "tests" / "data" / "paraphrase_corpus.json"
NODES = 3
CACHE = Path(tempfile.gettempdir()) / "spine-embed-bench-cache"  # minilm-static's token table
VENV_BIN = REPO / ".venv" / "bin"


# ----------------------------------------------------------------------------- quality


def load_corpus(path: Path = CORPUS) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The corpus's memories (id -> text) and labelled queries."""
    data = json.loads(path.read_text())
    return data["memories"], data["queries"]


def evaluate(embedder: Any, k: int = 10) -> dict[str, Any]:
    """recall@k, nDCG@k (binary relevance) and every query's rank of its first relevant memory."""
    import numpy as np

    memories, queries = load_corpus()
    ids = list(memories)
    docs = embedder.embed([memories[i] for i in ids])
    qs = embedder.embed([q["query"] for q in queries])
    scores = qs @ docs.T
    recall = ndcg = 0.0
    ranks: dict[str, int] = {}
    for qi, q in enumerate(queries):
        order = [ids[j] for j in np.argsort(-scores[qi], kind="stable")]
        relevant = set(q["relevant"])
        top = order[:k]
        recall += len(relevant & set(top)) / len(relevant)
        dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(top) if d in relevant)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
        ndcg += dcg / ideal
        ranks[q["query"]] = min(order.index(d) for d in relevant) + 1
    n = len(queries)
    return {"recall@10": recall / n, "ndcg@10": ndcg / n, "ranks": ranks}


def words() -> list[str]:
    """English words to build bench texts from (the corpus's own vocabulary)."""
    memories, queries = load_corpus()
    out = sorted({w.strip(".,'").lower() for t in memories.values() for w in t.split()}
                 | {w.lower() for q in queries for w in q["query"].split()})
    return [w for w in out if w.isalpha()]


def text(rng: random.Random, vocab: list[str], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def cpu_us_per_embedding(embedder: Any, n_words: int, count: int = 128) -> float:
    """This process's CPU µs per text, embedding `count` texts of `n_words` words in one call."""
    rng = random.Random(5)
    vocab = words()
    texts = [text(rng, vocab, n_words) for _ in range(count)]
    embedder.embed(texts[:4])
    start = time.process_time()
    embedder.embed(texts)
    return (time.process_time() - start) / count * 1e6


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    import gc

    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def corpus_texts() -> list[str]:
    """Every memory and query text of the paraphrase and retrieval corpora."""
    import retrieval

    memories, queries = load_corpus()
    rc = retrieval.load()
    return [*memories.values(), *(q["query"] for q in queries), *rc["memories"].values(),
            *(q["query"] for q in rc["queries"])]


def quality() -> None:
    import importlib.util

    import numpy as np
    import retrieval

    from spine.storage.embedders import make_embedder

    names = ["minilm", "minilm-int8", "minilm-static", "hash"]  # minilm first: the cosines' reference
    if importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("torch"):
        names.append("minilm-torch")
    print(f"corpus: {CORPUS.relative_to(REPO)}; load average {os.getloadavg()[0]:.2f} "
          f"(shared box)")
    texts = corpus_texts()
    rcorpus = retrieval.load()
    print(f"paraphrase: recall@10 / nDCG@10 on it; retrieval: vector-mode on "
          f"{len(rcorpus['memories'])} memories; cos: to minilm over {len(texts)} texts")
    print(f"{'embedder':<14}{'recall@10':>10}{'nDCG@10':>9}{'kitten rank':>12}"
          f"{'ret R@10':>9}{'ret nDCG':>9}{'cos min':>9}{'cos mean':>9}"
          f"{'µs/30w':>9}{'µs/5w':>8}{'+RSS MiB':>9}")
    ref = None
    for name in names:
        before = rss_mib()
        emb = make_embedder(name, 384, 1, cache_dir=CACHE)
        r = evaluate(emb)
        grown = rss_mib() - before
        vec = retrieval.evaluate(rcorpus, emb.embed)["vector"]["all"]
        vecs = emb.embed(texts)
        if name == "minilm":
            ref = vecs
        cos = np.sum(vecs * ref, axis=1) if ref is not None else None
        cos_s = (f"{cos.min():>9.4f}{cos.mean():>9.4f}" if cos is not None
                 else f"{'-':>9}{'-':>9}")
        us30 = cpu_us_per_embedding(emb, 30)
        us5 = cpu_us_per_embedding(emb, 5)
        print(f"{name:<14}{r['recall@10']:>10.3f}{r['ndcg@10']:>9.3f}"
              f"{r['ranks']['a kitten watching sparrows']:>12}{vec.recall:>9.3f}{vec.ndcg:>9.3f}"
              f"{cos_s}{us30:>9.0f}{us5:>8.0f}{grown:>9.0f}", flush=True)


# ----------------------------------------------------------------------------- load


class Cluster:
    """`spine up` (3 nodes, no fsync) with the embedder settings laid over by --config."""

    def __init__(self, data: Path, base_port: int, embedder: dict[str, Any]) -> None:
        from search_bench import port_free

        self.urls = [f"http://127.0.0.1:{base_port + i}" for i in range(NODES)]
        self.config = data.resolve() / "cluster.yaml"
        busy = [p for i in range(NODES) for p in (base_port + i, base_port + 1000 + i,
                                                  base_port + 2000 + i) if not port_free(p)]
        if busy:
            raise SystemExit(f"ports {busy} are in use: pick another --base-port")
        extra = data / "bench.yaml"
        extra.write_text(json.dumps({"embedder": embedder}))
        self.log = open(data / "spine-up.log", "ab")
        self.up = subprocess.Popen(
            [str(VENV_BIN / "spine"), "up", "--nodes", str(NODES), "--base-port",
             str(base_port), "--data", str(data), "--no-sync", "--config", str(extra)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=REPO,
        )
        self.nodes: list[int] = []

    def start(self) -> None:
        from search_bench import children_of, wait_ready

        wait_ready(self.urls, self.up, timeout=300)  # minilm-static may build its table first
        deadline = time.monotonic() + 10
        while len(self.nodes) < NODES and time.monotonic() < deadline:
            self.nodes = children_of(self.up.pid)
            time.sleep(0.05)

    def cpu_s(self) -> float:
        from search_bench import proc_cpu_s

        return sum(proc_cpu_s(p) for p in self.nodes)

    def rss_mib(self) -> list[float]:
        out = []
        for pid in self.nodes:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]) / 1024)
        return out

    def stop(self) -> None:
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
        from search_bench import serve_processes

        for pid in serve_processes(self.config):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


async def phase(urls: list[str], clients: int, duration: float, kind: str) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(11 if kind == "write" else 12)
    vocab = words()
    lat: list[float] = []
    counts = {"ok": 0, "429": 0, "error": 0}
    end = time.monotonic() + duration

    async def client(c: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.monotonic() < end:
            url = rng.choice(urls)
            i += 1
            if kind == "write":
                req = session.put(f"{url}/v1/ns/bench/memories/c{c}-{i}",
                                  json={"content": text(rng, vocab, rng.randint(26, 34))})
            else:
                req = session.post(f"{url}/v1/ns/bench/search",
                                   json={"query": text(rng, vocab, 5), "k": 10})
            t0 = time.monotonic()
            try:
                async with req as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            if 200 <= status < 300:
                lat.append(time.monotonic() - t0)
                counts["ok"] += 1
            elif status == 429:
                counts["429"] += 1
            else:
                counts["error"] += 1

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(client(c, session) for c in range(clients)))
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {**counts, "rate": counts["ok"] / duration, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def load(args: argparse.Namespace) -> None:
    import urllib.request

    from spine.storage.embedders import make_embedder

    emb_cfg: dict[str, Any] = {"name": args.embedder}
    if args.threads:
        emb_cfg["threads"] = args.threads
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        cluster = Cluster(Path(tmp), args.base_port, emb_cfg)
        try:
            cluster.start()
            with urllib.request.urlopen(cluster.urls[0] + "/v1/cluster", timeout=5) as r:
                view = json.loads(r.read())["embedder"]
            print(f"embedder {view['name']} (fingerprint {view['fingerprint'][:12]}…), "
                  f"threads per node {view.get('threads')} ({os.cpu_count()} cores, {NODES} "
                  f"nodes), {args.clients} clients, {args.duration:.0f} s per phase; "
                  f"load average before {os.getloadavg()[0]:.2f} (shared box)")
            for kind in ("write", "search"):
                cpu0 = cluster.cpu_s()
                res = asyncio.run(phase(cluster.urls, args.clients, args.duration, kind))
                cpu_us = (cluster.cpu_s() - cpu0) / max(1, res["ok"]) * 1e6
                print(f"{('writes' if kind == 'write' else 'searches'):<9}{res['rate']:8.1f}/s  p50 {res['p50_ms']:7.1f} ms  "
                      f"p99 {res['p99_ms']:7.1f} ms  429s {res['429']}  errors {res['error']}  "
                      f"node CPU {cpu_us:8.0f} µs per {kind}")
            print("RSS per node MiB: " + ", ".join(f"{x:.0f}" for x in cluster.rss_mib()))
        finally:
            cluster.stop()
    emb = make_embedder(args.embedder, 384, 1, cache_dir=CACHE)
    print(f"model alone, 1 thread: {cpu_us_per_embedding(emb, 30):.0f} CPU µs per 30-word "
          f"memory, {cpu_us_per_embedding(emb, 5):.0f} per 5-word query")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", action="store_true", help="retrieval quality per embedder")
    ap.add_argument("--embedder", default="minilm", choices=["hash", "minilm", "minilm-int8", "minilm-static", "minilm-torch"])
    ap.add_argument("--threads", type=int, default=0, help="embedder.threads (0: auto)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--base-port", type=int, default=27788)  # below the ephemeral range
    args = ap.parse_args()
    if args.quality:
        quality()
    else:
        load(args)


if __name__ == "__main__":
    main()
