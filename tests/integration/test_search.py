"""Search through real clusters (DESIGN §5–§7, §11): the session token makes a client's own writes
and deletes show at once on any node; node loss keeps results complete while every shard has a
live replica and says `partial` (naming exactly the uncovered shards) when some shard has none;
filters answer exactly brute force; bad input is a 400 naming the field; and after a SIGKILL in the
middle of writes the recovered index holds exactly LMDB's live records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import tests.integration.cluster as harness
from spine.core.config import Config
from spine.core.ring import Ring
from spine.storage.embedders import make_embedder
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

DIM = 384
# A benchmark may use these ports while the tests run: keep every listener of ours out of them.
RESERVED_PORTS = range(18788, 20791)

Vec = npt.NDArray[np.float64]

# Overrides that stop every background repair (hinted handoff, and anti-entropy where this
# version of Spine has it), so a replica that missed a write stays stale.
NO_REPAIR: dict[str, Any] = {"handoff": {"enabled": False}}
if any(f.name == "antientropy" for f in dataclasses.fields(Config)):
    NO_REPAIR["antientropy"] = {"enabled": False}


@pytest.fixture(scope="module", autouse=True)
def _avoid_reserved_ports() -> Iterator[None]:
    real = harness.free_base_port

    def free_base_port(count: int, rng: random.Random | None = None) -> int:
        for _ in range(100):
            base = real(count, rng)
            ports = [base + off + i for off in (0, harness.RPC_OFFSET, harness.GOSSIP_OFFSET)
                     for i in range(count)]
            if not any(p in RESERVED_PORTS for p in ports):
                return base
        raise RuntimeError("no free base port outside the reserved range")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "free_base_port", free_base_port)
        yield


# ----------------------------------------------------------------------------- helpers


def unit_vectors(rng: np.random.Generator, n: int) -> Vec:
    m = rng.standard_normal((n, DIM))
    out: Vec = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


def search(c: LocalCluster, node: str, ns: str, body: dict[str, Any],
           session: str | None = None) -> dict[str, Any]:
    headers = {"Spine-Session": session} if session else None
    r = c.http(node, "POST", f"/v1/ns/{ns}/search", body, headers)
    assert r.status == 200, (node, body, r.status, r.body)
    out: dict[str, Any] = r.json()
    assert set(out) == {"results", "partial", "missing_shards"}, out
    return out


def ids_of(result: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in result["results"]]


def ring_of(c: LocalCluster) -> Ring:
    """The ring every node computes: the members of the config, shards, vnodes, n."""
    cfg = c.config
    ring = cfg.get("ring", {})
    return Ring(
        {n["id"]: n.get("zone", "") for n in cfg["nodes"]},
        shards=ring.get("shards", 256), vnodes=ring.get("vnodes", 128),
        n=cfg["replication"]["n"],
    )


def wait_all_visible(c: LocalCluster, node: str, ns: str, expected: set[str],
                     body: dict[str, Any]) -> None:
    """Poll (no token) until a search through `node` returns exactly `expected`."""
    got: list[str] = []

    def done() -> bool:
        got[:] = ids_of(search(c, node, ns, body))
        return set(got) == expected

    c.wait_until(done, 15.0, 0.05,
                 lambda: f"search on {node} to return {len(expected)} ids (got {len(got)})")


# ----------------------------------------------------------------------------- sessions, node loss

SENTENCES = [
    "the agent booked a flight to lisbon for the conference",
    "the agent cancelled the hotel in porto after the delay",
    "remember that the user prefers window seats on long flights",
    "the user is allergic to peanuts and shellfish",
    "quarterly report draft is due on friday afternoon",
    "the build broke after upgrading the numpy dependency",
    "deploy the search service behind the load balancer",
    "the cat knocked the coffee over the keyboard again",
    "schedule a meeting with the infrastructure team next week",
    "rotate the api keys of the staging cluster",
    "the user likes jazz and early morning runs",
    "a flight delay in lisbon moved the conference talk",
]


@pytest.mark.timeout(60)
def test_session_search_sees_own_writes_and_survives_node_loss(
    make_cluster: ClusterFactory,
) -> None:
    # Hints and anti-entropy off: a replica that is down during a write misses it until the
    # key is written again, which makes a stale replica on demand.
    # (allow_weaker lets the test read one replica's own copy with an eventual read.)
    c = make_cluster(3, **NO_REPAIR, consistency={"allow_weaker": True})
    c.wait_peers_alive()
    ns = "sessions"
    setup = c.client(["n1"])
    for i, text in enumerate(SENTENCES):
        setup.put(ns, f"d{i}", text)
    target = "the agent rebooked the lisbon flight and the hotel for the delayed conference"
    writer = c.client(["n1"])  # a session of its own: its token names the target only
    writer.put(ns, "target", target)

    # Through another node, at once, carrying the token: found, first for its own content.
    reader = c.client(["n3"], session=writer.session)
    res = reader.search(ns, target, k=5)
    assert res["partial"] is False and res["missing_shards"] == []
    assert ids_of(res)[0] == "target", res
    assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res["results"][0]["record"]["content"] == target
    assert "vector" not in res["results"][0]["record"]
    assert all(a["score"] >= b["score"] for a, b in zip(res["results"], res["results"][1:],
                                                         strict=False))

    # Delete through n1 while n2 is down: n2 comes back still holding the live target, and
    # answers it to every search. The token must hide it all the same.
    c.wait_until(lambda: c.local_record("n2", ns, "target") is not None, 10.0, 0.02,
                 "n2 to hold the target")
    c.kill("n2")
    writer.delete(ns, "target")
    c.start("n2")
    # Search asks a covering set of live nodes, starting with the coordinator itself: through
    # n2 (which holds every shard) only n2's stale index answers.
    stale = search(c, "n2", ns, {"query": target, "k": 20})
    assert "target" in ids_of(stale), "precondition: n2 should still answer the deleted target"
    reader.session = writer.session
    res = reader.search(ns, target, k=20)
    assert "target" not in ids_of(res), res
    assert res["partial"] is False
    # A search through n2 itself, the stale replica, honours the token too.
    res = search(c, "n2", ns, {"query": target, "k": 20}, session=writer.session)
    assert "target" not in ids_of(res), res

    # Deleting again reaches every replica, n2 included.
    writer.delete(ns, "target")
    # Without a token every node converges to the same answer: the distractors only.
    everything = {"query": "the agent flight lisbon conference hotel delay user", "k": 50}
    distractors = {f"d{i}" for i in range(len(SENTENCES))}
    for node in c.names:
        wait_all_visible(c, node, ns, distractors, everything)
    before = search(c, "n3", ns, everything)
    assert before["partial"] is False
    assert set(ids_of(before)) == distractors

    # One node down: N=3, so every shard still has two live replicas — complete, same answer.
    c.kill("n2")
    for node in ("n1", "n3"):
        for _ in range(2):  # the first search finds n2 dead, the second already knows
            res = search(c, node, ns, everything)
            assert res["partial"] is False and res["missing_shards"] == [], res
            assert ids_of(res) == ids_of(before)
            assert [h["score"] for h in res["results"]] == pytest.approx(
                [h["score"] for h in before["results"]], abs=1e-6)

    # Two of three down: the one live node holds every shard (N=3), so still complete.
    c.kill("n1")
    res = search(c, "n3", ns, everything)
    assert res["partial"] is False and res["missing_shards"] == [], res
    assert ids_of(res) == ids_of(before)
    # The token still works with its writer's nodes gone: the delete stays deleted.
    res = search(c, "n3", ns, {"query": target, "k": 20}, session=writer.session)
    assert "target" not in ids_of(res)


@pytest.mark.timeout(60)
def test_partial_names_exactly_the_shards_without_a_live_replica(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(4, replication={"n": 2})
    # Until every node has seen every peer up, a write whose preference list holds a peer its
    # coordinator still thinks down gets 1 of W=2 acks (503): wait, as a client would retry.
    c.wait_peers_alive()
    ring = ring_of(c)
    assert ring.n == 2 and ring.shards == 256
    ns = "partial"
    rng = np.random.default_rng(11)
    vectors = unit_vectors(rng, 80)
    client = c.client()
    for i, v in enumerate(vectors):
        client.put(ns, f"r{i}", f"record {i}", vector=v.tolist())
    all_ids = {f"r{i}" for i in range(len(vectors))}
    body = {"vector": unit_vectors(rng, 1)[0].tolist(), "k": 1000}
    for node in c.names:
        wait_all_visible(c, node, ns, all_ids, body)
        res = search(c, node, ns, body)
        assert res["partial"] is False and res["missing_shards"] == []

    dead = {"n3", "n4"}
    for node in sorted(dead):
        c.kill(node)
    missing = [s for s in range(ring.shards) if set(ring.preference_list(s)) <= dead]
    assert missing, "the test needs some shard whose replicas are all dead"
    reachable = {mid for mid in all_ids if ring.shard(ns, mid) not in missing}
    assert reachable and reachable != all_ids, "the test needs records on both sides"

    for node in ("n1", "n2"):
        for _ in range(2):  # before and after the node notices its peers are down
            res = search(c, node, ns, body)
            assert res["partial"] is True, res
            assert res["missing_shards"] == missing
            assert set(ids_of(res)) == reachable

    # One of them back: every shard has a live replica again, and every record is found.
    c.start("n3")
    c.wait_until(lambda: search(c, "n1", ns, body)["partial"] is False, 15.0, 0.05,
                 "n1 to see every shard covered again")
    res = search(c, "n1", ns, body)
    assert res["missing_shards"] == [] and set(ids_of(res)) == all_ids


def _first_id(ring: Ring, ns: str, prefix: str, keep: Callable[[set[str]], bool]) -> str:
    """The first id `prefix<i>` whose preference list satisfies `keep`."""
    for i in range(100_000):
        mid = f"{prefix}{i}"
        if keep(set(ring.preference_list(ring.shard(ns, mid)))):
            return mid
    raise AssertionError("no such id")


@pytest.mark.timeout(60)
def test_search_with_a_token_naming_an_unreachable_key_is_partial(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(4, replication={"n": 2})
    c.wait_peers_alive()
    ring = ring_of(c)
    ns = "tokenpartial"
    dead = {"n3", "n4"}
    on_dead = _first_id(ring, ns, "x", lambda pref: pref <= dead)
    on_live = _first_id(ring, ns, "y", lambda pref: not pref & dead)
    writer = c.client(["n1"])
    writer.put(ns, on_dead, "a memory on a shard that is about to lose both replicas")
    writer.put(ns, on_live, "a memory on a shard that keeps both replicas")
    for node in sorted(dead):
        c.kill(node)
    missing = [s for s in range(ring.shards) if set(ring.preference_list(s)) <= dead]
    body = {"query": "a memory on a shard", "k": 10}

    # Without the token: 200, partial, the reachable record found.
    res = search(c, "n1", ns, body)
    assert res["partial"] is True and res["missing_shards"] == missing
    assert ids_of(res) == [on_live]
    # With it: the same answer (the unreachable key's shard is already named as missing).
    r = c.http("n1", "POST", f"/v1/ns/{ns}/search", body, {"Spine-Session": writer.session})
    assert r.status == 200, (r.status, r.body)
    res = r.json()
    assert res["partial"] is True and res["missing_shards"] == missing
    assert ids_of(res) == [on_live]


# ----------------------------------------------------------------------------- filters


@dataclass
class Doc:
    id: str
    vector: Vec
    tags: list[str]
    agent_id: str | None
    metadata: dict[str, Any]


def _docs(rng: random.Random, nrng: np.random.Generator, n: int) -> list[Doc]:
    vecs = unit_vectors(nrng, n)
    docs = []
    for i in range(n):
        meta: dict[str, Any] = {"color": rng.choice(["red", "green", "blue"])}
        if rng.random() < 0.7:
            meta["size"] = rng.randrange(3)
        if rng.random() < 0.3:
            meta["nested"] = {"a": rng.randrange(2)}
        docs.append(Doc(
            id=f"doc{i:02d}",
            vector=vecs[i],
            tags=sorted(rng.sample(["alpha", "beta", "gamma", "delta"], rng.randrange(4))),
            agent_id=rng.choice(["ann", "bob", None]),
            metadata=meta,
        ))
    return docs


def _expected(docs: list[Doc], q: Vec, k: int, keep: Callable[[Doc], bool],
              min_score: float | None = None) -> list[tuple[str, float]]:
    scored = [(d.id, float(d.vector @ q)) for d in docs if keep(d)]
    if min_score is not None:
        scored = [(i, s) for i, s in scored if s >= min_score]
    scored.sort(key=lambda x: (-x[1], x[0]))
    return scored[:k]


@pytest.mark.timeout(60)
def test_filters_answer_exactly_brute_force(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    c.wait_peers_alive()
    ns = "filters"
    rng = random.Random(21)
    nrng = np.random.default_rng(21)
    docs = _docs(rng, nrng, 40)
    client = c.client()
    for d in docs:
        fields: dict[str, Any] = {"vector": d.vector.tolist(), "tags": d.tags,
                                  "metadata": d.metadata}
        if d.agent_id is not None:
            fields["agent_id"] = d.agent_id
        client.put(ns, d.id, f"content of {d.id}", **fields)
    q = unit_vectors(nrng, 1)[0]
    for node in c.names:
        wait_all_visible(c, node, ns, {d.id for d in docs}, {"vector": q.tolist(), "k": 1000})

    # A threshold halfway between two scores, so float32 rounding cannot move a record across.
    all_scores = sorted(float(d.vector @ q) for d in docs)
    half = len(all_scores) // 2
    median = (all_scores[half - 1] + all_scores[half]) / 2
    cases: list[tuple[dict[str, Any], Callable[[Doc], bool]]] = [
        ({}, lambda d: True),
        ({"tags_all": ["alpha"]}, lambda d: "alpha" in d.tags),
        ({"tags_all": ["alpha", "beta"]}, lambda d: {"alpha", "beta"} <= set(d.tags)),
        ({"tags_any": ["gamma", "delta"]}, lambda d: bool({"gamma", "delta"} & set(d.tags))),
        ({"tags_all": ["alpha"], "tags_any": ["beta", "gamma"]},
         lambda d: "alpha" in d.tags and bool({"beta", "gamma"} & set(d.tags))),
        ({"agent_id": "ann"}, lambda d: d.agent_id == "ann"),
        ({"metadata": {"color": "red"}}, lambda d: d.metadata["color"] == "red"),
        ({"metadata": {"color": "blue", "size": 1}},
         lambda d: d.metadata["color"] == "blue" and d.metadata.get("size") == 1),
        ({"metadata": {"size": 0}}, lambda d: d.metadata.get("size") == 0),
        ({"metadata": {"nested": {"a": 1}}}, lambda d: d.metadata.get("nested") == {"a": 1}),
        ({"agent_id": "bob", "tags_any": ["alpha", "delta"], "metadata": {"color": "green"}},
         lambda d: d.agent_id == "bob" and bool({"alpha", "delta"} & set(d.tags))
         and d.metadata["color"] == "green"),
        ({"tags_all": ["nosuchtag"]}, lambda d: False),
        ({"agent_id": "nobody"}, lambda d: False),
        ({"metadata": {"color": "purple"}}, lambda d: False),
    ]
    checked_nonempty = 0
    for filters, keep in cases:
        for k in (1000, 3):
            for min_score in (None, median):
                body: dict[str, Any] = {"vector": q.tolist(), "k": k, **filters}
                if min_score is not None:
                    body["min_score"] = min_score
                want = _expected(docs, q, k, keep, min_score)
                for node in ("n1", "n3"):
                    res = search(c, node, ns, body)
                    got = [(h["id"], h["score"]) for h in res["results"]]
                    assert [i for i, _ in got] == [i for i, _ in want], (node, body)
                    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
                    assert res["partial"] is False
                    for h in res["results"]:
                        d = next(x for x in docs if x.id == h["id"])
                        rec = h["record"]
                        assert (rec["tags"], rec["agent_id"], rec["metadata"]) == (
                            d.tags, d.agent_id, d.metadata)
                checked_nonempty += bool(want)
    assert checked_nonempty >= 20  # the cases are not vacuous

    # k larger than the matches returns every match; smaller returns the top k.
    reds = [d for d in docs if d.metadata["color"] == "red"]
    assert 3 < len(reds) < len(docs)
    res = search(c, "n2", ns, {"vector": q.tolist(), "k": len(reds) + 50,
                               "metadata": {"color": "red"}})
    assert sorted(ids_of(res)) == sorted(d.id for d in reds)
    res = search(c, "n2", ns, {"vector": q.tolist(), "k": 2, "metadata": {"color": "red"}})
    assert ids_of(res) == [i for i, _ in _expected(docs, q, 2, lambda d: d in reds)]


# ----------------------------------------------------------------------------- bad input

_GOOD_VECTOR = [0.0] * (DIM - 1) + [1.0]

BAD_BODIES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("vector of the wrong dimension", {"vector": [0.1] * (DIM - 1)}, ("vector",)),
    ("vector too long", {"vector": [0.1] * (DIM + 1)}, ("vector",)),
    ("vector of strings", {"vector": ["a"] * DIM}, ("vector",)),
    ("vector of zeros", {"vector": [0.0] * DIM}, ("vector",)),
    ("vector not a list", {"vector": "0.1,0.2"}, ("vector",)),
    ("empty query", {"query": ""}, ("query",)),
    ("blank query", {"query": "   "}, ("query",)),
    ("query not a string", {"query": 42}, ("query",)),
    ("query and vector in vector mode", {"query": "hello", "vector": _GOOD_VECTOR,
                                         "mode": "vector"}, ("query",)),
    ("neither query nor vector", {"k": 3}, ("query", "vector")),
    ("k = 0", {"query": "hello", "k": 0}, ("k",)),
    ("k = 1001", {"query": "hello", "k": 1001}, ("k",)),
    ("k negative", {"query": "hello", "k": -1}, ("k",)),
    ("k a string", {"query": "hello", "k": "10"}, ("k",)),
    ("k a float", {"query": "hello", "k": 2.5}, ("k",)),
    ("k a bool", {"query": "hello", "k": True}, ("k",)),
    ("unknown filter field", {"query": "hello", "tagz": ["a"]}, ("tagz",)),
    ("tags_all not a list", {"query": "hello", "tags_all": "red"}, ("tags_all",)),
    ("tags_any not a list", {"query": "hello", "tags_any": {"red": 1}}, ("tags_any",)),
    ("tags_all holding a bad tag", {"query": "hello", "tags_all": ["Not A Tag"]},
     ("tags_all", "tags_all[0]")),
    ("min_score a string", {"query": "hello", "min_score": "0.5"}, ("min_score",)),
    ("min_score a bool", {"query": "hello", "min_score": True}, ("min_score",)),
    ("metadata not an object", {"query": "hello", "metadata": ["color", "red"]}, ("metadata",)),
    ("agent_id not a string", {"query": "hello", "agent_id": 7}, ("agent_id",)),
    ("body not an object", ["query", "hello"], ("body",)),
]


@pytest.mark.timeout(60)
def test_bad_search_input_is_a_400_naming_the_field(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    failures = []
    for what, body, fields in BAD_BODIES:
        r = c.http("n2", "POST", "/v1/ns/badinput/search", body)
        err = r.error() if r.status == 400 else None
        if err is None or err["code"] != "invalid" or err.get("field") not in fields:
            failures.append(f"{what}: {r.status} {r.body[:200]!r}")
    for what, raw in [("malformed JSON", b"{\"query\": "), ("empty body", b"")]:
        r = c.http("n2", "POST", "/v1/ns/badinput/search", raw)
        if r.status != 400 or r.error().get("field") != "body":
            failures.append(f"{what}: {r.status} {r.body[:200]!r}")
    assert not failures, "\n".join(failures)
    # The same bodies fixed are fine (the check above is not failing for another reason).
    ok = search(c, "n2", "badinput", {"query": "hello", "k": 1000, "tags_all": ["red"],
                                       "min_score": 0.5, "metadata": {"a": 1}, "agent_id": "x"})
    assert ok["results"] == []


# ----------------------------------------------------------------------------- crash recovery

WORDS = [f"w{i}" for i in range(300)]
CRASH_NAMESPACES = ("crash-a", "crash-b")
CRASH_IDS = 120


@dataclass
class WriterLog:
    """What the background writer did: the last acknowledged state of every key it touched."""

    acked: dict[tuple[str, str], str | None] = field(default_factory=dict)  # None = deleted
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    ops: int = 0
    error: BaseException | None = None


def _writer(c: LocalCluster, log: WriterLog, stop: threading.Event, seed: int) -> None:
    """Puts, overwrites and deletes (single and batched) until the node dies or `stop` is set."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    nonce = 0

    def item() -> tuple[tuple[str, str], dict[str, Any]]:
        nonlocal nonce
        key = (rng.choice(CRASH_NAMESPACES), f"k{rng.randrange(CRASH_IDS)}")
        if key in log.acked and log.acked[key] is not None and rng.random() < 0.3:
            return key, {"delete": True}
        nonce += 1
        body: dict[str, Any] = {
            "content": " ".join(rng.choices(WORDS, k=rng.randrange(4, 9))) + f" n{nonce}",
            "tags": rng.sample(["x", "y", "z"], rng.randrange(3)),
        }
        if rng.random() < 0.3:
            body["vector"] = unit_vectors(nrng, 1)[0].tolist()
        return key, body

    try:
        while not stop.is_set():
            if rng.random() < 0.25:
                items = [item() for _ in range(rng.randrange(2, 12))]
                ns = items[0][0][0]
                items = [(k, b) for k, b in items if k[0] == ns]
                log.in_flight = {k for k, _ in items}
                payload = [{"id": k[1], **b} for k, b in items]
                r = c.http("n1", "POST", f"/v1/ns/{ns}/memories/_batch", {"items": payload},
                           timeout=5.0)
                assert r.status == 200, (r.status, r.body)
                results = r.json()["results"]
                assert all(x["status"] in (200, 201) for x in results), results
            else:
                key, body = item()
                items = [(key, body)]
                log.in_flight = {key}
                path = f"/v1/ns/{key[0]}/memories/{key[1]}"
                if body.get("delete"):
                    r = c.http("n1", "DELETE", path, timeout=5.0)
                else:
                    r = c.http("n1", "PUT", path, body, timeout=5.0)
                assert r.status in (200, 201), (r.status, r.body)
            for key, body in items:
                log.acked[key] = None if body.get("delete") else body["content"]
            log.in_flight = set()
            log.ops += 1
    except BaseException as e:  # the node was killed under us (or a real failure: reported)
        log.error = e


def _index_dir_current(c: LocalCluster) -> bool:
    return (c.data_dir / "n1" / "index" / "CURRENT").exists()


async def _recover_offline(c: LocalCluster, node_dir: Path) -> tuple[str, dict[str, Any]]:
    """Open a dead node's LMDB and index as spine.node.Node does, recover, compare."""
    cfg = c.config
    index_cfg = cfg.get("index", {})
    embedder = make_embedder("hash", DIM)
    ring = ring_of(c)
    store = Store(node_dir / "lmdb", shard_of=ring.shard, sync=False)
    indexer = Indexer(
        store, node_dir / "index", dim=DIM, m=index_cfg.get("m", 16),
        ef_construction=index_cfg.get("ef_construction", 200),
        ef_search=index_cfg.get("ef_search", 64), fingerprint=embedder.fingerprint,
        persist_interval=index_cfg["persist_interval_s"], sleep=asyncio.sleep,
    )
    store.subscribe(indexer.on_commit)
    try:
        how = indexer.recover()
        store.start()
        live: dict[str, dict[str, Any]] = {}
        for rec in store.iter_all():
            if not rec.deleted and rec.vector is not None:
                live.setdefault(rec.namespace, {})[rec.id] = rec
        for ns in sorted(set(live) | set(indexer.indexes.namespaces())):
            index = indexer.indexes.peek(ns)
            indexed = set(index.keys()) if index is not None else set()
            want = set(live.get(ns, {}))
            assert indexed == want, (
                f"{ns}: indexed but not live in LMDB {sorted(indexed - want)}; "
                f"live in LMDB but not indexed {sorted(want - indexed)} ({how})"
            )
            assert index is not None or not want
            for mid, rec in live.get(ns, {}).items():
                assert index is not None
                got = index.vector(mid)
                assert got is not None
                np.testing.assert_allclose(got, np.frombuffer(rec.vector, np.float32),
                                           rtol=0, atol=1e-6, err_msg=f"{ns}/{mid}")
        return how, live
    finally:
        await indexer.stop()
        store.close()


@pytest.mark.timeout(90)
def test_index_equals_lmdb_after_kill_9_during_writes(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    c = make_cluster(1, index={"persist_interval_s": 1})
    assert c.config["replication"]["n"] == 1
    log = WriterLog()
    stop = threading.Event()
    thread = threading.Thread(target=_writer, args=(c, log, stop, 31), daemon=True)
    thread.start()
    try:
        # Kill only once a snapshot exists and plenty of writes came after it, so recovery
        # loads a snapshot and replays the change log (a rebuild would match trivially).
        c.wait_until(lambda: _index_dir_current(c) and log.ops >= 100, 30.0, 0.02,
                     lambda: f"a first index snapshot ({log.ops} ops, error {log.error!r})")
        after = log.ops + 250
        c.wait_until(lambda: log.ops >= after or log.error is not None, 30.0, 0.01,
                     lambda: f"250 more ops ({log.ops}/{after})")
        assert log.error is None, log.error
        c.kill("n1")
        thread.join(timeout=15)
        assert not thread.is_alive(), "the writer did not notice the node died"
    finally:
        stop.set()
        thread.join(timeout=15)
    assert log.error is not None  # it stopped because the node died, not on its own
    in_flight = set(log.in_flight)

    # Offline: open a copy of the dead node's files exactly as the node does, and recover.
    # (A copy, so that the restart below recovers from the very files the crash left.)
    copy = tmp_path / "n1-copy"
    shutil.copytree(c.data_dir / "n1", copy)
    how, live = asyncio.run(_recover_offline(c, copy))
    assert how.startswith("loaded snapshot at "), how

    # No acknowledged write was lost: every key's state is its last acknowledged write
    # (except the keys of the request the kill interrupted, which may or may not have landed).
    for (ns, mid), content in log.acked.items():
        if (ns, mid) in in_flight:
            continue
        rec = live.get(ns, {}).get(mid)
        if content is None:
            assert rec is None, f"{ns}/{mid} was deleted (acknowledged) but is live"
        else:
            assert rec is not None, f"{ns}/{mid} was written (acknowledged) but is not live"
            assert rec.content == content
    n_live = sum(len(v) for v in live.values())
    assert n_live > 20

    # Restart the node on its own files: every live record is found by its own vector.
    c.start("n1")
    for ns, recs in live.items():
        for mid, rec in recs.items():
            vec = np.frombuffer(rec.vector, np.float32).tolist()
            res = search(c, "n1", ns, {"vector": vec, "k": 1})
            assert ids_of(res) == [mid], (ns, mid, res["results"][:1])
            assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        # And nothing else: a search for everything returns exactly the live ids.
        res = search(c, "n1", ns, {"query": " ".join(WORDS[:50]), "k": 1000})
        assert set(ids_of(res)) == set(recs), ns
