"""Dedup on create through a real 3-node cluster (DESIGN §13).

Exact dedup: 8 writers post the same fact at once through different nodes; one memory exists
afterwards, every writer is answered with it, and exactly one was told it created it. Semantic
dedup: a near-identical text finds the first memory, a different text (or the same text outside
the `tags_all` scope) is created. Bad `dedup` values are 400s naming the field.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from spine.api.dedup import exact_id
from tests.harness.http_client import Reply
from tests.integration.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODES = ("n1", "n2", "n3")
WRITERS = 8


def create(c: LocalCluster, node: str, ns: str, body: dict[str, Any],
           timeout: float = 10.0) -> Reply:
    return c.http(node, "POST", f"/v1/ns/{ns}/memories", body, timeout=timeout)


def listed(c: LocalCluster, node: str, ns: str) -> list[dict[str, Any]]:
    r = c.http(node, "GET", f"/v1/ns/{ns}/memories?limit=100")
    assert r.status == 200, r.body
    page = r.json()
    assert not page["partial"], page
    items: list[dict[str, Any]] = page["items"]
    return items


def test_concurrent_identical_creates_make_one_memory(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "dedup-exact-race"
    # Whitespace differs between writers: normalisation makes them one fact.
    texts = ("Deploy freeze starts Friday 18:00 UTC", "  Deploy freeze starts\nFriday  18:00 UTC ")
    replies: list[Reply | BaseException | None] = [None] * WRITERS
    start = threading.Barrier(WRITERS)

    def writer(i: int) -> None:
        try:
            start.wait(timeout=10)
            replies[i] = create(c, NODES[i % len(NODES)], ns,
                                {"content": texts[i % 2], "agent_id": f"agent-{i}",
                                 "dedup": "exact"}, timeout=30)
        except BaseException as e:  # reported below, with the writer's index
            replies[i] = e

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a writer is still running"
    got: list[Reply] = []
    for i, r in enumerate(replies):
        assert isinstance(r, Reply), (i, r)
        assert r.status in (200, 201), (i, r.status, r.body)
        got.append(r)

    want_id = exact_id(ns, texts[0])
    assert want_id == exact_id(ns, texts[1])
    records = [r.json() for r in got]
    assert {rec["id"] for rec in records} == {want_id}, records
    statuses = sorted(r.status for r in got)
    assert statuses.count(201) == 1, statuses
    winner = next(rec for r, rec in zip(got, records, strict=True) if r.status == 201)
    assert winner["deduplicated"] is False
    for r, rec in zip(got, records, strict=True):
        assert r.headers["ETag"] == f'"{rec["version"]}"', (r.headers, rec)
        if r.status == 200:
            assert rec["deduplicated"] is True
            # every writer is answered with the one that won, not its own text or agent
            assert {k: rec[k] for k in ("content", "agent_id", "version")} == \
                {k: winner[k] for k in ("content", "agent_id", "version")}

    for node in NODES:
        items = c.wait_until(lambda node=node: listed(c, node, ns), 10,
                             message=f"the memory listed through {node}")
        assert [it["id"] for it in items] == [want_id], items


def test_exact_dedup_recreates_after_delete(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "dedup-exact-delete"
    body = {"content": "Staging uses Postgres 16", "dedup": "exact"}
    first = create(c, "n1", ns, body)
    assert first.status == 201, first.body
    again = create(c, "n2", ns, body)
    assert again.status == 200 and again.json()["deduplicated"] is True, again.body
    assert again.json()["version"] == first.json()["version"]
    mid = first.json()["id"]
    gone = c.http("n3", "DELETE", f"/v1/ns/{ns}/memories/{mid}")
    assert gone.status == 200, gone.body
    back = create(c, "n1", ns, body)  # a tombstone is not a live record: created again
    assert back.status == 201 and back.json()["id"] == mid, back.body
    assert back.json()["deduplicated"] is False


def test_semantic_dedup_answers_a_near_duplicate(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "dedup-semantic"
    dedup = {"min_score": 0.8}
    first = create(c, "n1", ns, {"content": "The nightly build failed on ticket ABC-123",
                                 "tags": ["ci"], "dedup": dedup})
    assert first.status == 201, first.body
    first_id = first.json()["id"]
    assert first.json()["deduplicated"] is False

    def indexed(node: str) -> bool:  # best effort by design: wait until search sees it
        r = c.http(node, "POST", f"/v1/ns/{ns}/search",
                   {"query": "nightly build failed ticket ABC-123", "k": 1})
        return r.status == 200 and [x["id"] for x in r.json()["results"]] == [first_id]

    for node in NODES:
        c.wait_until(lambda node=node: indexed(node), 10, message=f"indexed at {node}")

    near = create(c, "n2", ns, {"content": "the nightly build failed on ticket abc-123.",
                                "dedup": dedup})
    assert near.status == 200, near.body
    rec = near.json()
    assert rec["deduplicated"] is True
    assert (rec["id"], rec["content"]) == (first_id, "The nightly build failed on ticket ABC-123")
    assert near.headers["ETag"] == f'"{rec["version"]}"'
    assert near.headers["Spine-Session"]

    other = create(c, "n3", ns, {"content": "Rotate the staging database credentials monthly",
                                 "dedup": dedup})
    assert other.status == 201 and other.json()["id"] != first_id, other.body
    # The same text outside the scope (tags_all it lacks) is not a duplicate: created.
    scoped = create(c, "n1", ns, {"content": "The nightly build failed on ticket ABC-123",
                                  "dedup": {**dedup, "tags_all": ["security"]}})
    assert scoped.status == 201, scoped.body
    assert scoped.json()["id"] not in (first_id, other.json()["id"])
    items = c.wait_until(lambda: len(x := listed(c, "n2", ns)) == 3 and x, 10,
                         message="three memories listed")
    ids = {it["id"] for it in items}
    assert ids == {first_id, other.json()["id"], scoped.json()["id"]}


@pytest.mark.parametrize(("body", "field"), [
    ({"content": "x", "dedup": "fuzzy"}, "dedup"),
    ({"content": "x", "dedup": None}, "dedup"),
    ({"content": "x", "dedup": {"min_score": 1.5}}, "dedup.min_score"),
    ({"content": "x", "dedup": {"min_score": -0.1}}, "dedup.min_score"),
    ({"content": "x", "dedup": {"min_score": "0.9"}}, "dedup.min_score"),
    ({"content": "x", "dedup": {}}, "dedup.min_score"),
    ({"content": "x", "dedup": {"min_score": 0.9, "k": 3}}, "dedup.k"),
    ({"content": "x", "dedup": {"min_score": 0.9, "tags_all": ["Bad Tag"]}},
     "dedup.tags_all[0]"),
])
def test_bad_dedup_is_a_400_naming_the_field(shared_cluster: LocalCluster, body: dict[str, Any],
                                              field: str) -> None:
    r = create(shared_cluster, "n1", "dedup-bad", body)
    assert r.status == 400, r.body
    assert r.error()["field"] == field, r.body


def test_dedup_on_put_is_a_400(shared_cluster: LocalCluster) -> None:
    r = shared_cluster.http("n2", "PUT", "/v1/ns/dedup-bad/memories/m1",
                            {"content": "x", "dedup": "exact"})
    assert r.status == 400, r.body
    assert r.error()["field"] == "dedup", r.body
    assert "POST" in r.error()["message"]


def test_python_client_create_with_dedup(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "dedup-client"
    with c.client(["n1"]) as one, c.client(["n3"]) as other:
        first = one.create(ns, "Incident 4711 was caused by an expired TLS certificate",
                           dedup="exact", tags=["incident"])
        again = other.create(ns, "Incident 4711 was caused by an expired  TLS certificate\n",
                             dedup="exact")
        assert first.deduplicated is False and again.deduplicated is True  # type: ignore[attr-defined]
        assert again["id"] == first["id"] == exact_id(ns, first["content"])
        assert again["tags"] == ["incident"]  # the existing memory, not the duplicate's body
        # semantic, through the writer's own session: its write counts at once
        near = one.create(ns, "incident 4711 was caused by an expired TLS certificate!",
                          dedup=0.8)
        assert near.deduplicated is True and near["id"] == first["id"]  # type: ignore[attr-defined]
