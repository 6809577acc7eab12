"""Vector shapes of bench/peers.py: the same vectors ingested into Spine (`_batch`) and chroma
(`add`), then the same query vectors sent by the same concurrent client to both, with
recall@k against numpy brute force.

Datasets (as bench/ann_recall.py draws them): `clustered`, unit vectors near a random
32-dimensional subspace (closer to what sentence embedders produce), and `random`, i.i.d.
unit vectors (HNSW's worst case).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

DIM = 384
INTRINSIC_DIM = 32
JSON = {"Content-Type": "application/json"}


def dataset(kind: str, n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(`n` records, `queries` query vectors), float32 unit rows of DIM."""
    rng = np.random.default_rng(seed)

    def unit(m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m

    if kind == "random":
        return unit(rng.standard_normal((n, DIM))), unit(rng.standard_normal((queries, DIM)))
    basis = rng.standard_normal((INTRINSIC_DIM, DIM))

    def draw(rows: int) -> np.ndarray:
        low = rng.standard_normal((rows, INTRINSIC_DIM)) @ basis
        return unit(low + 0.1 * rng.standard_normal((rows, DIM)))

    return draw(n), draw(queries)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """The exact top-k row numbers of each query by cosine (dot product of unit rows)."""
    out = []
    for i in range(0, len(queries), 64):
        scores = queries[i:i + 64] @ data.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out.extend(set(row.tolist()) for row in top)
    return out


# ---------------------------------------------------------------------------------- targets

class Target:
    """One system's ingest and query requests."""

    name = ""

    def ingest_request(self, i: int, ids: list[str], vecs: np.ndarray) -> tuple[str, bytes]:
        raise NotImplementedError

    def ingest_ok(self, status: int, body: bytes) -> str | None:
        """None if every item of the batch was applied, else what went wrong."""
        raise NotImplementedError

    def query_request(self, i: int, q: np.ndarray, k: int) -> tuple[str, bytes]:
        raise NotImplementedError

    def query_ids(self, body: bytes) -> list[str]:
        raise NotImplementedError


class SpineTarget(Target):
    """`POST /v1/ns/{ns}/memories/_batch` with vectors; `POST /v1/ns/{ns}/search` with a
    `vector`; requests round-robin over the nodes."""

    name = "spine"

    def __init__(self, urls: list[str], ns: str) -> None:
        self.urls = urls
        self.ns = ns

    def ingest_request(self, i: int, ids: list[str], vecs: np.ndarray) -> tuple[str, bytes]:
        items = [{"id": mid, "content": f"vector record {mid}", "vector": v}
                 for mid, v in zip(ids, vecs, strict=True)]
        url = f"{self.urls[i % len(self.urls)]}/v1/ns/{self.ns}/memories/_batch"
        return url, orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY)

    def ingest_ok(self, status: int, body: bytes) -> str | None:
        if status != 200:
            return f"http {status}: {body[:120]!r}"
        bad = [r for r in orjson.loads(body)["results"] if r["status"] not in (200, 201)]
        return f"{len(bad)} items failed, first {bad[0]}" if bad else None

    def query_request(self, i: int, q: np.ndarray, k: int) -> tuple[str, bytes]:
        url = f"{self.urls[i % len(self.urls)]}/v1/ns/{self.ns}/search"
        return url, orjson.dumps({"vector": q, "k": k}, option=orjson.OPT_SERIALIZE_NUMPY)

    def query_ids(self, body: bytes) -> list[str]:
        return [r["id"] for r in orjson.loads(body)["results"]]


class ChromaTarget(Target):
    """A collection (cosine space, chroma's default HNSW settings, no embedding function):
    `add` with `embeddings`, `query` with `query_embeddings`."""

    name = "chroma"

    def __init__(self, api: str, collection: str) -> None:
        self.api = api
        req = urllib.request.Request(
            f"{api}/collections", method="POST", headers=JSON,
            data=orjson.dumps({"name": collection, "configuration": {"hnsw": {"space": "cosine"}},
                               "get_or_create": True}))
        with urllib.request.urlopen(req, timeout=30) as r:
            info = orjson.loads(r.read())
        self.cid = info["id"]
        self.settings = info.get("configuration_json", {}).get("hnsw")

    def ingest_request(self, i: int, ids: list[str], vecs: np.ndarray) -> tuple[str, bytes]:
        body = {"ids": ids, "embeddings": vecs,
                "documents": [f"vector record {mid}" for mid in ids]}
        return (f"{self.api}/collections/{self.cid}/add",
                orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))

    def ingest_ok(self, status: int, body: bytes) -> str | None:
        return None if status in (200, 201) else f"http {status}: {body[:120]!r}"

    def query_request(self, i: int, q: np.ndarray, k: int) -> tuple[str, bytes]:
        body = {"query_embeddings": [q], "n_results": k, "include": ["distances"]}
        return (f"{self.api}/collections/{self.cid}/query",
                orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))

    def query_ids(self, body: bytes) -> list[str]:
        return list(orjson.loads(body)["ids"][0])

    def count(self) -> int:
        with urllib.request.urlopen(f"{self.api}/collections/{self.cid}/count", timeout=30) as r:
            return int(orjson.loads(r.read()))


# ---------------------------------------------------------------------------------- ingest

async def ingest(target: Target, data: np.ndarray, batch: int, concurrency: int,
                 tries: int = 5) -> dict[str, Any]:
    """Every record in batches of `batch`, `concurrency` calls in flight; records/s over the
    whole ingest, counting only records applied. A batch that fails (or any item of which
    fails) is sent again, up to `tries` times in all (upserts by id are idempotent), so that
    the data searched is complete. Bodies are encoded before the clock starts."""
    bodies = []
    for n, start in enumerate(range(0, len(data), batch)):
        ids = [f"m{i}" for i in range(start, min(len(data), start + batch))]
        bodies.append(target.ingest_request(n, ids, data[start:start + len(ids)]))
    queue = list(range(len(bodies)))
    queue.reverse()
    sent = [0] * len(bodies)
    latencies: list[float] = []
    errors: list[str] = []
    lost: list[int] = []  # batches that failed every try
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def worker() -> None:
            while queue:
                n = queue.pop()
                url, body = bodies[n]
                sent[n] += 1
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=body, headers=JSON) as r:
                        raw = await r.read()
                        status = r.status
                    problem = target.ingest_ok(status, raw)
                except (aiohttp.ClientError, TimeoutError) as e:
                    problem = f"{type(e).__name__}: {e}"
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(f"batch {n} try {sent[n]}: {problem}")
                    if sent[n] < tries:
                        queue.insert(0, n)  # again, after the others
                    else:
                        lost.append(n)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    applied = len(data) - sum(min(batch, len(data) - n * batch) for n in lost)
    return {"records": len(data), "applied": applied, "batch": batch,
            "concurrency": concurrency, "wall_s": round(wall, 2),
            "ops_per_s": round(applied / wall, 1), "latencies_s": latencies,
            "errors": errors[:5], "failed_tries": len(errors), "lost_batches": len(lost)}


def wait_spine_indexed(target: SpineTarget, data: np.ndarray, last: int, deadline_s: float,
                       k: int = 10) -> float | None:
    """Seconds until every node finds each of the `last` records as its own nearest neighbour
    (its vector as the query), as bench/search_bench.py waits on text; None past the deadline."""
    t0 = time.monotonic()
    rows = list(range(len(data) - last, len(data)))
    pending = [(n, row) for n in range(len(target.urls)) for row in rows]
    while pending:
        node, row = pending[0]
        url, body = target.query_request(node, data[row], k)
        req = urllib.request.Request(url, data=body, headers=JSON, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if f"m{row}" in target.query_ids(r.read()):
                    pending.pop(0)
                    continue
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() - t0 > deadline_s:
            return None
        time.sleep(0.2)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------- search

@dataclass
class SearchRun:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    answers: dict[int, list[str]] = field(default_factory=dict)  # query number -> ids
    wall_s: float = 0.0


async def search_load(target: Target, queries: np.ndarray, k: int, concurrency: int,
                      warmup: float, duration: float,
                      on_measure: Callable[[], None], on_end: Callable[[], None]) -> SearchRun:
    """`concurrency` closed-loop clients, each cycling through the query vectors from its own
    offset; counted after `warmup` for `duration` seconds. Every answer is kept for recall."""
    bodies = [target.query_request(i, q, k) for i, q in enumerate(queries)]
    run = SearchRun()
    measuring = False
    stop_at = time.perf_counter() + warmup + duration
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker(w: int) -> None:
            i = w * (len(bodies) // concurrency)
            while time.perf_counter() < stop_at:
                qn = i % len(bodies)
                i += 1
                url, body = bodies[qn]
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=body, headers=JSON) as r:
                        raw = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as e:
                    if measuring:
                        run.errors[type(e).__name__] = run.errors.get(type(e).__name__, 0) + 1
                    continue
                dt_s = time.perf_counter() - t0
                if status != 200:
                    if measuring:
                        run.errors[f"http {status}"] = run.errors.get(f"http {status}", 0) + 1
                    continue
                run.answers.setdefault(qn, target.query_ids(raw))
                if measuring:
                    run.latencies_s.append(dt_s)

        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        on_measure()
        t0 = time.perf_counter()
        await asyncio.gather(*tasks)
        run.wall_s = time.perf_counter() - t0
        on_end()
    return run


def recall(answers: dict[int, list[str]], truth: list[set[int]], k: int) -> float | None:
    """Mean recall@k over the queries answered."""
    if not answers:
        return None
    hits = sum(len({int(x[1:]) for x in ids[:k]} & truth[qn]) for qn, ids in answers.items())
    return hits / (k * len(answers))


def percentile_ms(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] * 1000
