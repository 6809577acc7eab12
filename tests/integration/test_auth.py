"""API keys: stored hashed, `agent` keys limited to their namespaces, `admin` anywhere (§11)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spine.client import SpineHTTPError
from spine.core.config import hash_key
from tests.harness.http_client import Reply
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

AGENT_SECRET = "agent-a-secret-0123456789"
ADMIN_SECRET = "admin-secret-9876543210"
NODES = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("auth"))
    try:
        yield factory(
            api_key=ADMIN_SECRET,  # the harness's own /healthz and /metrics requests
            auth={"keys": [
                {"name": "agent-a", "sha256": hash_key(AGENT_SECRET), "role": "agent",
                 "namespaces": ["team-a"]},
                {"name": "root", "sha256": hash_key(ADMIN_SECRET), "role": "admin"},
            ]},
        )
    finally:
        factory.close()


def _call(c: LocalCluster, node: str, method: str, path: str, key: str | None,
          body: object = None, scheme: str = "Bearer") -> Reply:
    headers = {"Authorization": f"{scheme} {key}"} if key is not None else {}
    return c.http(node, method, path, body, headers, use_key=key is not None)


def _error(r: Reply, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.error()["code"] == code


@pytest.mark.timeout(60)
def test_no_key_or_a_wrong_key_is_401(auth_cluster: LocalCluster) -> None:
    c = auth_cluster
    for node in NODES:
        for method, path, body in (
            ("PUT", "/v1/ns/team-a/memories/x", {"content": "x"}),
            ("GET", "/v1/ns/team-a/memories/x", None),
            ("GET", "/v1/ns/team-a/memories", None),
            ("POST", "/v1/ns/team-a/memories/_batch", {"items": [{"id": "x", "content": "y"}]}),
        ):
            _error(_call(c, node, method, path, None, body), 401, "unauthorized")
            _error(_call(c, node, method, path, "wrong-key", body), 401, "unauthorized")
            _error(_call(c, node, method, path, AGENT_SECRET, body, scheme="Basic"), 401,
                   "unauthorized")
            # The sha256 stored in the config is not itself a key.
            _error(_call(c, node, method, path, hash_key(AGENT_SECRET), body), 401,
                   "unauthorized")
    r = _call(c, "n1", "GET", "/v1/ns/team-a/memories/x", ADMIN_SECRET)
    assert r.status == 404, r.body  # nothing of the refused writes was stored


@pytest.mark.timeout(60)
def test_agent_key_is_limited_to_its_namespaces(auth_cluster: LocalCluster) -> None:
    c = auth_cluster
    for node in NODES:
        r = _call(c, node, "PUT", "/v1/ns/team-b/memories/x", AGENT_SECRET, {"content": "x"})
        _error(r, 403, "forbidden")
        assert r.error()["field"] == "namespace"
        _error(_call(c, node, "GET", "/v1/ns/team-b/memories/x", AGENT_SECRET), 403, "forbidden")
        _error(_call(c, node, "GET", "/v1/ns/team-b/memories", AGENT_SECRET), 403, "forbidden")
        _error(_call(c, node, "POST", f"/v1/cluster/nodes/{node}/remove", AGENT_SECRET), 403,
               "forbidden")
    r = _call(c, "n2", "GET", "/v1/ns/team-b/memories/x", ADMIN_SECRET)
    assert r.status == 404, r.body


@pytest.mark.timeout(60)
def test_agent_key_works_in_its_namespace_and_is_the_agent_id(auth_cluster: LocalCluster) -> None:
    c = auth_cluster
    agent = c.client(api_key=AGENT_SECRET)
    created = agent.put("team-a", "note", "from agent a")
    assert created["agent_id"] == "agent-a"
    # A body cannot claim to be another agent: the key decides.
    spoof = agent.put("team-a", "spoof", "who am i", agent_id="someone-else")
    assert spoof["agent_id"] == "agent-a"
    minted = agent.create("team-a", "minted")
    assert minted["agent_id"] == "agent-a"
    batch = agent.batch("team-a", [{"id": "b1", "content": "one", "agent_id": "other"}])
    assert [x["status"] for x in batch["results"]] == [201]
    for mid in ("note", "spoof", minted["id"], "b1"):
        assert agent.get("team-a", mid)["agent_id"] == "agent-a"
    listed = agent.list("team-a", agent_id="agent-a", limit=100)
    assert {x["id"] for x in listed["items"]} >= {"note", "spoof", "b1"}
    assert agent.history("team-a", "note")["versions"][0]["agent_id"] == "agent-a"
    agent.delete("team-a", "note")
    with pytest.raises(SpineHTTPError) as e:
        agent.get("team-a", "note")
    assert e.value.status == 404


@pytest.mark.timeout(60)
def test_admin_key_works_on_any_namespace(auth_cluster: LocalCluster) -> None:
    c = auth_cluster
    admin = c.client(api_key=ADMIN_SECRET)
    for ns in ("team-a", "team-b", "ops"):
        rec = admin.put(ns, "admin-note", f"admin in {ns}", agent_id="tool-7")
        assert rec["agent_id"] == "tool-7"  # an admin may write on an agent's behalf
        assert admin.get(ns, "admin-note")["content"] == f"admin in {ns}"
    assert c.client(api_key=AGENT_SECRET).get("team-a", "admin-note")["agent_id"] == "tool-7"
    r = _call(c, "n3", "GET", "/v1/cluster", ADMIN_SECRET)
    assert r.status == 200 and r.json()["node"] == "n3"


@pytest.mark.timeout(60)
def test_health_probes_need_no_key(auth_cluster: LocalCluster) -> None:
    # A load balancer's health check (DESIGN §12: haproxy in front of three nodes) sends no
    # credentials; with keys configured every node would look dead to it.
    c = auth_cluster
    for path in ("/healthz", "/readyz"):
        r = _call(c, "n1", "GET", path, None)
        assert r.status == 200, (path, r.status, r.body)

