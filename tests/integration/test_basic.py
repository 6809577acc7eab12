"""The public API end to end on a real 3-node cluster (DESIGN §1, §4, §11)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from spine.client import SpineHTTPError
from spine.core.ring import Ring
from tests.harness.http_client import Reply
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECORD_FIELDS = {"namespace", "id", "content", "tags", "metadata", "agent_id", "created_at",
                 "updated_at", "version", "deleted", "expires_at"}


def put(c: LocalCluster, node: str, ns: str, mid: str, body: dict[str, Any],
        level: str | None = None) -> Reply:
    headers = {"Spine-Consistency": level} if level else {}
    return c.http(node, "PUT", f"/v1/ns/{ns}/memories/{mid}", body, headers)


def check_record(rec: dict[str, Any], ns: str, mid: str, content: str) -> None:
    assert set(rec) == RECORD_FIELDS, rec
    assert (rec["namespace"], rec["id"], rec["content"]) == (ns, mid, content)
    assert rec["deleted"] is False
    assert RFC3339.match(rec["created_at"]) and RFC3339.match(rec["updated_at"]), rec
    assert isinstance(rec["version"], str) and rec["version"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("write_level", ["eventual", "session", "strong"])
def test_write_through_one_node_is_read_through_the_others(
    shared_cluster: LocalCluster, write_level: str
) -> None:
    c = shared_cluster
    ns = f"basic-rw-{write_level}"
    body = {"content": f"written at {write_level}", "tags": ["b", "a", "b"],
            "metadata": {"k": [1, 2]}}
    w = put(c, "n1", ns, "m1", body, write_level)
    assert w.status == 201, w.body
    written = w.json()
    check_record(written, ns, "m1", body["content"])
    assert written["tags"] == ["a", "b"]  # sorted and unique
    assert written["metadata"] == {"k": [1, 2]}
    token = w.headers["Spine-Session"]
    assert token

    for node in ("n2", "n3"):
        # eventual: R=1 on the node's own replica; W may be 1, so poll until it arrives.
        got = c.wait_until(lambda node=node: c.local_record(node, ns, "m1"), 10,
                           message=f"m1 to reach {node}")
        assert got == written
        # session with the writer's token: at least the written version, at once.
        r = c.read(node, ns, "m1", "session", session=token)
        assert r.status == 200, r.body
        assert r.json() == written
        assert r.headers["Spine-Session"]
        # strong: a quorum read with write-back.
        if write_level != "eventual":
            r = c.read(node, ns, "m1", "strong")
            assert r.status == 200, r.body
            assert r.json() == written
            # session without a token is a quorum read: W + R > N, so it sees the write.
            r = c.read(node, ns, "m1", "session")
            assert r.status == 200, r.body
            assert r.json() == written
        else:
            for level in ("strong", "session"):
                r = c.wait_until(
                    lambda node=node, level=level: (x := c.read(node, ns, "m1", level))
                    .status == 200 and x,
                    10, message=f"a {level} read of m1 on {node}",
                )
                assert r.json() == written


@pytest.mark.timeout(30)
def test_post_mints_a_uuid7_and_answers_201(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-post"
    ids = []
    token = ""
    for node in NODES:
        r = c.http(node, "POST", f"/v1/ns/{ns}/memories", {"content": f"via {node}"},
                   {"Spine-Session": token} if token else {})
        assert r.status == 201, r.body
        token = r.headers["Spine-Session"]
        rec = r.json()
        check_record(rec, ns, rec["id"], f"via {node}")
        assert UUID7.match(rec["id"]), rec["id"]
        ids.append(rec["id"])
    assert len(set(ids)) == 3
    stamps = [int(i.replace("-", "")[:12], 16) for i in ids]  # 48-bit ms: time-ordered
    assert stamps == sorted(stamps)
    client = c.client(session=token)  # the token names all three: read-your-writes anywhere
    for mid, node in zip(ids, NODES, strict=True):
        assert client.get(ns, mid)["content"] == f"via {node}"


@pytest.mark.timeout(30)
def test_put_answers_201_for_a_new_id_and_200_for_an_existing_one(
    shared_cluster: LocalCluster,
) -> None:
    c = shared_cluster
    ns = "basic-put-status"
    first = put(c, "n1", ns, "k", {"content": "one"})
    assert first.status == 201, first.body
    second = put(c, "n1", ns, "k", {"content": "two"})
    assert second.status == 200, second.body
    a, b = first.json(), second.json()
    assert b["content"] == "two"
    assert b["version"] > a["version"]
    assert b["created_at"] == a["created_at"]
    assert b["updated_at"] >= a["updated_at"]
    # A delete and a re-create: new again.
    assert c.http("n1", "DELETE", f"/v1/ns/{ns}/memories/k").status == 200
    third = put(c, "n1", ns, "k", {"content": "three"})
    assert third.status == 201, third.body


@pytest.mark.timeout(30)
def test_delete_then_get_is_404_not_found_everywhere(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-delete"
    w = put(c, "n1", ns, "gone", {"content": "soon deleted"})
    assert w.status == 201
    d = c.http("n1", "DELETE", f"/v1/ns/{ns}/memories/gone",
               headers={"Spine-Session": w.headers["Spine-Session"]})
    assert d.status == 200, d.body
    body = d.json()
    assert body["id"] == "gone" and body["deleted"] is True
    assert body["version"] > w.json()["version"]
    token = d.headers["Spine-Session"]
    for node in NODES:
        for level, session in (("session", token), ("session", None), ("strong", None)):
            r = c.read(node, ns, "gone", level, session)
            assert r.status == 404, (node, level, r.body)
            err = r.error()
            assert err["code"] == "not_found"
            assert err["field"] == "id"
        c.wait_until(lambda node=node: c.read(node, ns, "gone", "eventual").status == 404, 10,
                     message=f"the tombstone to reach {node}")
    # The tombstone is a version in the history, newest first.
    h = c.http("n2", "GET", f"/v1/ns/{ns}/memories/gone/history")
    assert h.status == 200
    versions = h.json()["versions"]
    assert [v["deleted"] for v in versions] == [True, False]


@pytest.mark.timeout(60)
def test_list_pages_return_every_live_record_exactly_once(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-list"
    client = c.client()
    ids = [f"item-{i:03d}" for i in range(25)]
    for i, mid in enumerate(ids):
        client.put(ns, mid, f"content {i}", tags=["even" if i % 2 == 0 else "odd"])
    for mid in ("item-003", "item-010", "item-024"):
        client.delete(ns, mid)
    live = [m for m in ids if m not in ("item-003", "item-010", "item-024")]

    for node in NODES:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 7}
            if cursor is not None:
                params["cursor"] = cursor
            qs = "&".join(f"{k}={v}" for k, v in params.items())
            r = c.http(node, "GET", f"/v1/ns/{ns}/memories?{qs}")
            assert r.status == 200, r.body
            page = r.json()
            assert len(page["items"]) <= 7
            assert page["partial"] is False
            for item in page["items"]:
                assert item["deleted"] is False
                assert item["content"] == f"content {int(item['id'][5:])}"
            seen.extend(item["id"] for item in page["items"])
            pages += 1
            assert pages <= 10, f"paging does not end: {seen}"
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == live, node  # every live record once, in id order

    odd = client.list(ns, tag="odd", limit=100)
    assert [x["id"] for x in odd["items"]] == [m for m in live if int(m[5:]) % 2 == 1]
    assert odd["next_cursor"] is None


@pytest.mark.timeout(30)
def test_history_shows_prior_versions_newest_first(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-history"
    client = c.client(["n2"])
    versions = [client.put(ns, "h", f"v{i}")["version"] for i in range(4)]
    for node in NODES:
        r = c.http(node, "GET", f"/v1/ns/{ns}/memories/h/history")
        assert r.status == 200, r.body
        got = r.json()["versions"]
        assert [v["content"] for v in got] == ["v3", "v2", "v1", "v0"]
        assert [v["version"] for v in got] == versions[::-1]
        assert all(v["concurrent"] is False for v in got), got
    missing = c.http("n1", "GET", f"/v1/ns/{ns}/memories/never/history")
    assert missing.status == 404
    assert missing.error()["code"] == "not_found"


@pytest.mark.timeout(30)
def test_every_reply_names_its_coordinator(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-coord"
    for node in NODES:
        for method, path, body in (
            ("PUT", f"/v1/ns/{ns}/memories/x", {"content": "x"}),
            ("GET", f"/v1/ns/{ns}/memories/x", None),
            ("GET", f"/v1/ns/{ns}/memories/nope", None),
            ("GET", f"/v1/ns/{ns}/memories", None),
            ("PUT", f"/v1/ns/{ns}/memories/-bad", {"content": "x"}),
        ):
            r = c.http(node, method, path, body)
            assert r.headers.get("Spine-Coordinator") in NODES, (node, method, path, r.status)
    client = c.client(["n3"])
    client.get(ns, "x")
    assert client.last_coordinator == "n3"  # every node is a replica with N=3


@pytest.mark.timeout(30)
def test_metrics_expose_the_operator_contract(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    c.client(["n1"]).put("basic-metrics", "m", "x")
    r = c.http("n1", "GET", "/metrics")
    assert r.status == 200
    assert r.headers.get_content_type() == "text/plain"
    text = r.body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name, kind in (
        ("spine_requests_total", "counter"),
        ("spine_request_seconds", "histogram"),
        ("spine_quorum_failures_total", "counter"),
        ("spine_hints_pending", "gauge"),
        ("spine_conflicts_total", "counter"),
        ("spine_read_repairs_total", "counter"),
    ):
        assert types.get(name) == kind, (name, types)
    assert c.metric("n1", "spine_requests_total", level="session", status="201") >= 1
    assert c.metric("n1", "spine_request_seconds_count", level="session") >= 1
    # Every sample line parses (the harness parser raises on anything else).
    assert c.metrics("n1")


@pytest.mark.timeout(30)
def test_cluster_view_shape(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    for node in NODES:
        view = c.cluster_view(node)
        assert view["node"] == node
        members = {m["id"]: m for m in view["members"]}
        assert set(members) == set(NODES)
        for mid, m in members.items():
            assert {"id", "address", "zone", "state"} <= set(m), m
            assert m["address"] == f"127.0.0.1:{c.port(mid)}"
            assert m["state"] == "active"
        assert view["ring"] == {"shards": 256, "vnodes": 128, "n": 3, "n_by_region": {}}
        emb = view["embedder"]
        assert {"name", "dim", "fingerprint"} <= set(emb)
        assert emb["dim"] == 384 and isinstance(emb["name"], str)


@pytest.mark.timeout(30)
def test_openapi_document_lists_the_api(shared_cluster: LocalCluster) -> None:
    r = shared_cluster.http("n2", "GET", "/openapi.json")
    assert r.status == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, methods in (
        ("/v1/ns/{ns}/memories/{id}", {"put", "get", "delete"}),
        ("/v1/ns/{ns}/memories", {"post", "get"}),
        ("/v1/ns/{ns}/memories/{id}/history", {"get"}),
        ("/v1/ns/{ns}/memories/_batch", {"post"}),
        ("/v1/ns/{ns}/search", {"post"}),
        ("/v1/cluster", {"get"}),
        ("/v1/cluster/shards", {"get"}),
        ("/healthz", {"get"}),
        ("/readyz", {"get"}),
        ("/metrics", {"get"}),
    ):
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [x for v in node.values() for x in refs(v)]
        if isinstance(node, list):
            return [x for v in node for x in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


@pytest.mark.timeout(30)
def test_client_raises_on_404_with_the_error_code(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(SpineHTTPError) as e:
        client.get("basic-client", "absent")
    assert e.value.status == 404 and e.value.code == "not_found"


@pytest.mark.timeout(30)
def test_batch_upserts_and_deletes_in_order(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-batch"
    client = c.client()
    client.put(ns, "b-existing", "old")
    out = client.batch(ns, [
        {"id": "b-new", "content": "new", "tags": ["t"]},
        {"id": "b-existing", "content": "replaced"},
        {"id": "b-existing-2", "content": "two"},
        {"id": "b-existing-2", "delete": True},
    ])
    results = out["results"]
    assert [x["id"] for x in results] == ["b-new", "b-existing", "b-existing-2", "b-existing-2"]
    assert [x["status"] for x in results[:2]] == [201, 200]
    assert all(isinstance(x["version"], str) for x in results)
    assert client.get(ns, "b-new")["tags"] == ["t"]
    assert client.get(ns, "b-existing")["content"] == "replaced"
    with pytest.raises(SpineHTTPError) as e:
        client.get(ns, "b-existing-2")
    assert e.value.status == 404


def _key_not_on(node: str, nodes: int, ns: str) -> tuple[str, tuple[str, ...]]:
    """An id whose preference list (N=3 of `nodes`) leaves `node` out."""
    ring = Ring({f"n{i + 1}": "" for i in range(nodes)}, shards=256, vnodes=128, n=3)
    for i in range(1000):
        prefs = ring.preference_list(ring.shard(ns, f"k{i}"))
        if node not in prefs:
            return f"k{i}", prefs
    raise AssertionError("no such key")


@pytest.mark.timeout(60)
def test_a_node_that_is_not_a_replica_forwards_to_one(make_cluster: ClusterFactory) -> None:
    c = make_cluster(nodes=4)
    ns = "basic-forward"
    shards = c.http("n4", "GET", "/v1/cluster/shards").json()["shards"]
    ring = Ring({n: "" for n in c.names}, shards=256, vnodes=128, n=3)
    assert all(tuple(s["preference_list"]) == ring.preference_list(s["shard"]) for s in shards)
    mid, prefs = _key_not_on("n4", 4, ns)
    w = c.http("n4", "PUT", f"/v1/ns/{ns}/memories/{mid}", {"content": "forwarded"})
    assert w.status == 201, w.body
    assert w.json()["version"].rsplit(".", 1)[1] in prefs  # a replica minted the version
    token = w.headers["Spine-Session"]
    g = c.read("n4", ns, mid, "session", session=token)
    assert g.status == 200 and g.json() == w.json(), g.body
    assert g.headers["Spine-Coordinator"] in prefs
    assert c.metric("n4", "spine_forwards_total") >= 2
    # Every replica holds it (a quorum read through each, which it coordinates itself).
    for node in prefs:
        got = c.wait_until(lambda node=node: c.read(node, ns, mid, "session").status == 200, 10,
                           message=f"{mid} on {node}")
        assert got
    h = c.http("n4", "GET", f"/v1/ns/{ns}/memories/{mid}/history")
    assert h.status == 200 and [v["content"] for v in h.json()["versions"]] == ["forwarded"]
    listed = c.http("n4", "GET", f"/v1/ns/{ns}/memories").json()["items"]
    assert [x["id"] for x in listed] == [mid]
    d = c.http("n4", "DELETE", f"/v1/ns/{ns}/memories/{mid}", headers={"Spine-Session": token})
    assert d.status == 200, d.body
    r = c.read("n4", ns, mid, "session", session=d.headers["Spine-Session"])
    assert r.status == 404, r.body


@pytest.mark.timeout(60)
def test_a_forwarded_write_names_its_coordinator(make_cluster: ClusterFactory) -> None:
    c = make_cluster(nodes=4)
    ns = "basic-forward-header"
    mid, prefs = _key_not_on("n4", 4, ns)
    w = c.http("n4", "PUT", f"/v1/ns/{ns}/memories/{mid}", {"content": "forwarded"})
    assert w.status == 201, w.body
    assert w.headers["Spine-Coordinator"] in prefs, (w.headers["Spine-Coordinator"], prefs)
    assert w.headers["Spine-Coordinator"] == w.json()["version"].rsplit(".", 1)[1]


@pytest.mark.timeout(30)
def test_batch_item_statuses_match_single_requests(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "basic-batch-status"
    out = c.client(["n1"]).batch(ns, [
        {"id": "never-existed", "delete": True},  # DELETE answers 200, never "201 created"
        {"id": "dup", "content": "a"},  # 201: new
        {"id": "dup", "content": "b"},  # 200: it exists now (PUT, PUT would say 201, 200)
    ])
    assert [x["status"] for x in out["results"]] == [200, 201, 200], out
