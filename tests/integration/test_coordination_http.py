"""Conditional writes, leases and fenced writes over HTTP on a real 3-node cluster (DESIGN §12).

Each step goes through a different node than the one before, so what one node's consensus round
decided is what the next node's round sees.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.http_client import Reply
from tests.integration.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODES = ("n1", "n2", "n3")
BODY = {"content": "claimed"}


def mem(ns: str, mid: str) -> str:
    return f"/v1/ns/{ns}/memories/{mid}"


def lease(ns: str, name: str) -> str:
    return f"/v1/ns/{ns}/leases/{name}"


def put(c: LocalCluster, node: str, ns: str, mid: str, body: dict[str, Any] | None = None,
        **headers: str) -> Reply:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    return c.http(node, "PUT", mem(ns, mid), body or BODY, hdrs)


def etag_of(reply: Reply) -> str:
    tag = reply.headers["ETag"]
    assert tag == f'"{reply.json()["version"]}"', (tag, reply.body)
    return str(tag)


def error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body)
    err = reply.error()
    assert err["code"] == code, err
    return err


def test_if_match_compares_and_sets_across_nodes(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "coord-cas"
    first = put(c, "n1", ns, "task-1")
    assert first.status == 201, first.body
    v1 = etag_of(first)
    got = c.http("n2", "GET", mem(ns, "task-1"), headers={"Spine-Consistency": "strong"})
    assert got.status == 200 and got.headers["ETag"] == v1, (got.status, got.body)

    second = put(c, "n2", ns, "task-1", {"content": "second"}, If_Match=v1)
    assert second.status == 200, second.body
    v2 = etag_of(second)
    assert v2 != v1 and second.json()["content"] == "second"
    assert second.headers["Spine-Session"]

    stale = put(c, "n3", ns, "task-1", {"content": "lost update"}, If_Match=v1)
    assert error(stale, 412, "precondition_failed")["current"] == v2.strip('"')
    stale_delete = c.http("n1", "DELETE", mem(ns, "task-1"), headers={"If-Match": v1})
    assert error(stale_delete, 412, "precondition_failed")["current"] == v2.strip('"')
    now = c.http("n1", "GET", mem(ns, "task-1"), headers={"Spine-Consistency": "strong"})
    assert (now.json()["content"], now.headers["ETag"]) == ("second", v2)

    gone = c.http("n3", "DELETE", mem(ns, "task-1"), headers={"If-Match": v2})
    assert gone.status == 200 and gone.json()["deleted"] is True, gone.body
    assert gone.headers["ETag"] == f'"{gone.json()["version"]}"'
    missing = c.http("n2", "GET", mem(ns, "task-1"), headers={"Spine-Consistency": "strong"})
    assert missing.status == 404 and "ETag" not in missing.headers
    # If-Match on a key with no live record: 412 with current null.
    assert error(put(c, "n1", ns, "task-1", If_Match=v2), 412,
                 "precondition_failed")["current"] is None


def test_if_none_match_creates_only(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "coord-create"
    made = put(c, "n1", ns, "gate", If_None_Match="*")
    assert made.status == 201, made.body
    v1 = etag_of(made)
    again = put(c, "n2", ns, "gate", {"content": "second creator"}, If_None_Match="*")
    assert error(again, 412, "precondition_failed")["current"] == v1.strip('"')
    # A plain (unconditional) write is still a write; a tombstone counts as no record.
    assert c.http("n3", "DELETE", mem(ns, "gate")).status == 200
    remade = put(c, "n3", ns, "gate", {"content": "after delete"}, If_None_Match="*")
    assert remade.status == 201, remade.body
    assert etag_of(remade) != v1


def test_a_conditional_write_runs_on_the_node_that_led_the_keys_last_round(
    shared_cluster: LocalCluster,
) -> None:
    """Conditional writes sent to the other nodes are carried out by the node whose round
    created the key (Spine-Coordinator), where the key is warm; their answers are unchanged."""
    c, ns = shared_cluster, "coord-leader"
    made = put(c, "n1", ns, "job", If_None_Match="*")
    assert made.status == 201 and made.headers["Spine-Coordinator"] == "n1", made.body
    tag = etag_of(made)
    for node in ("n2", "n3", "n2"):
        nxt = put(c, node, ns, "job", {"content": f"via {node}"}, If_Match=tag)
        assert nxt.status == 200, nxt.body
        assert nxt.headers["Spine-Coordinator"] == "n1", (node, nxt.headers)
        stale = put(c, node, ns, "job", {"content": "lost update"}, If_Match=tag)
        tag = etag_of(nxt)
        assert error(stale, 412, "precondition_failed")["current"] == tag.strip('"')
        assert nxt.headers["Spine-Session"]
        got = c.http(node, "GET", mem(ns, "job"),
                     headers={"Spine-Session": nxt.headers["Spine-Session"]})
        assert got.json()["content"] == f"via {node}", got.body


def test_lease_acquire_renew_conflict_release_reacquire(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "coord-lease"
    path = lease(ns, "deploy")
    assert error(c.http("n1", "GET", path), 404, "not_found")
    assert error(c.http("n1", "DELETE", path + "?token=1"), 404, "not_found")

    got = c.http("n1", "POST", path, {"holder": "agent-a", "ttl_ms": 60_000})
    assert got.status == 200, got.body
    a = got.json()
    assert (a["name"], a["holder"], a["ttl_ms"]) == ("deploy", "agent-a", 60_000)
    # remaining_ms: until another holder may get it, ttl_ms + clock.max_offset_ms (500) after
    assert a["token"] >= 1 and 0 < a["remaining_ms"] <= 60_000 + 500

    renewed = c.http("n2", "POST", path, {"holder": "agent-a", "ttl_ms": 30_000})
    assert renewed.status == 200, renewed.body
    assert (renewed.json()["token"], renewed.json()["ttl_ms"]) == (a["token"], 30_000)

    held = error(c.http("n3", "POST", path, {"holder": "agent-b", "ttl_ms": 60_000}), 409,
                 "lease_held")
    assert (held["holder"], held["token"]) == ("agent-a", a["token"])
    assert 0 < held["remaining_ms"] <= 30_000 + 1_000, held

    shown = c.http("n3", "GET", path)
    assert shown.status == 200 and shown.json()["holder"] == "agent-a", shown.body

    wrong = error(c.http("n1", "DELETE", f"{path}?token={a['token'] + 1}"), 409, "conflict")
    assert wrong["field"] == "token"
    freed = c.http("n2", "DELETE", f"{path}?token={a['token']}")
    assert freed.status == 200, freed.body
    assert (freed.json()["holder"], freed.json()["token"]) == (None, a["token"])
    after = c.http("n1", "GET", path).json()
    assert (after["holder"], after["token"], after["remaining_ms"]) == (None, a["token"], 0)

    b = c.http("n3", "POST", path, {"holder": "agent-b", "ttl_ms": 60_000})
    assert b.status == 200, b.body
    assert b.json()["holder"] == "agent-b" and b.json()["token"] > a["token"]


def test_a_lapsed_lease_goes_to_the_next_holder_with_a_higher_token(
    shared_cluster: LocalCluster
) -> None:
    c, ns = shared_cluster, "coord-lapse"
    path = lease(ns, "short")
    a = c.http("n1", "POST", path, {"holder": "agent-a", "ttl_ms": 200})
    assert a.status == 200, a.body

    def granted() -> dict[str, Any] | None:
        r = c.http("n2", "POST", path, {"holder": "agent-b", "ttl_ms": 60_000})
        assert r.status in (200, 409), (r.status, r.body)
        return r.json() if r.status == 200 else None

    # ttl_ms + clock.max_offset_ms (500 by default) after the grant, by the deciding node's clock
    b = c.wait_until(granted, 15, 0.1, "agent-b to get the lapsed lease")
    assert b["holder"] == "agent-b" and b["token"] > a.json()["token"]


def test_fenced_writes_refuse_a_lower_token(shared_cluster: LocalCluster) -> None:
    c, ns = shared_cluster, "coord-fence"
    ok = put(c, "n1", ns, "shared", {"content": "by token 2"}, Spine_Fence="job=2")
    assert ok.status == 201, ok.body
    late = put(c, "n2", ns, "shared", {"content": "by token 1"}, Spine_Fence="job=1")
    err = error(late, 409, "fenced")
    assert (err["lease"], err["token"], err["highest"]) == ("job", 1, 2)
    late_delete = c.http("n3", "DELETE", mem(ns, "shared"), headers={"Spine-Fence": "job=1"})
    assert error(late_delete, 409, "fenced")["highest"] == 2
    # The same token again, a higher one, and an unfenced write all go through.
    assert put(c, "n3", ns, "shared", {"content": "token 2 again"}, Spine_Fence="job=2").status \
        == 200
    assert put(c, "n1", ns, "shared", {"content": "token 3"}, Spine_Fence="job=3").status == 200
    now = c.http("n2", "GET", mem(ns, "shared"), headers={"Spine-Consistency": "strong"})
    assert now.json()["content"] == "token 3"
    err = error(put(c, "n2", ns, "shared", Spine_Fence="job=2"), 409, "fenced")
    assert err["highest"] == 3


def test_fencing_with_tokens_from_real_grants(shared_cluster: LocalCluster) -> None:
    """The task-claim pattern: A takes the lease, loses it to B, and A's late write is refused."""
    c, ns = shared_cluster, "coord-claim"
    path = lease(ns, "task-42")
    a = c.http("n1", "POST", path, {"holder": "agent-a", "ttl_ms": 60_000}).json()
    assert c.http("n1", "DELETE", f"{path}?token={a['token']}").status == 200
    b = c.http("n2", "POST", path, {"holder": "agent-b", "ttl_ms": 60_000}).json()
    assert b["token"] > a["token"]
    wrote = put(c, "n2", ns, "task-42", {"content": "b's result"},
                Spine_Fence=f"task-42={b['token']}")
    assert wrote.status == 201, wrote.body
    late = put(c, "n3", ns, "task-42", {"content": "a's stale result"},
               Spine_Fence=f"task-42={a['token']}")
    assert error(late, 409, "fenced")["highest"] == b["token"]


@pytest.mark.parametrize(("method", "path", "body", "headers", "field"), [
    ("PUT", mem("coord-bad", "k"), BODY, {"If-Match": "not-quoted"}, "If-Match"),
    ("PUT", mem("coord-bad", "k"), BODY, {"If-Match": "*"}, "If-Match"),
    ("PUT", mem("coord-bad", "k"), BODY, {"If-None-Match": '"x"'}, "If-None-Match"),
    ("DELETE", mem("coord-bad", "k"), None, {"If-None-Match": "*"}, "If-None-Match"),
    ("PUT", mem("coord-bad", "k"), BODY, {"Spine-Fence": "job"}, "Spine-Fence"),
    ("PUT", mem("coord-bad", "k"), BODY, {"Spine-Fence": "job=0"}, "Spine-Fence"),
    ("DELETE", mem("coord-bad", "k"), None, {"Spine-Fence": "-job=1"}, "Spine-Fence"),
    ("POST", "/v1/ns/coord-bad/memories", BODY, {"If-None-Match": "*"}, "If-None-Match"),
    ("POST", "/v1/ns/coord-bad/memories/_batch", {"items": [{"id": "k", "content": "c"}]},
     {"If-Match": '"0000000000000001.n1"'}, "If-Match"),
    ("POST", "/v1/ns/coord-bad/memories/_batch",
     {"items": [{"id": "k", "content": "c"}, {"id": "j", "delete": True, "fence": "a=1"}]},
     {}, "items[1].fence"),
    ("POST", lease("coord-bad", "l"), {"ttl_ms": 1000}, {}, "holder"),
    ("POST", lease("coord-bad", "l"), {"holder": "a", "ttl_ms": 0}, {}, "ttl_ms"),
    ("POST", lease("coord-bad", "l"), {"holder": "a", "ttl_ms": 600_001}, {}, "ttl_ms"),
    ("POST", lease("coord-bad", "l"), {"holder": "a", "ttl_ms": 5, "x": 1}, {}, "x"),
    ("POST", lease("coord-bad", "bad%20name"), {"holder": "a", "ttl_ms": 5}, {}, "name"),
    ("GET", lease("coord-bad", "-l"), None, {}, "name"),
    ("DELETE", lease("coord-bad", "l"), None, {}, "token"),
    ("DELETE", lease("coord-bad", "l") + "?token=one", None, {}, "token"),
])
def test_bad_input_is_a_400_naming_the_field(
    shared_cluster: LocalCluster, method: str, path: str, body: Any, headers: dict[str, str],
    field: str,
) -> None:
    err = error(shared_cluster.http("n2", method, path, body, headers), 400, "invalid")
    assert err["field"] == field, err
    # nothing was written
    assert shared_cluster.http("n1", "GET", mem("coord-bad", "k"),
                               headers={"Spine-Consistency": "strong"}).status == 404
