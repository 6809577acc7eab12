"""Unit tests for spine.core.config: defaults, the strict loader, cross-field checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from spine.core.config import Config, from_dict, hash_key, load
from spine.core.consistency import Level, Quorum
from spine.core.errors import ConfigError
from spine.core.local_cluster import local_cluster
from spine.core.validation import Limits

SHA = "a" * 64


def bad(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return info.value


def test_empty_config_is_all_defaults() -> None:
    cfg = from_dict({})
    assert cfg == Config()
    assert from_dict(None) == Config()
    assert cfg.ring.shards == 256
    assert cfg.ring.vnodes == 128
    assert cfg.replication.n == 3
    assert cfg.consistency.default == "session"
    assert cfg.clock.max_offset_ms == 500
    assert cfg.session.max_keys == 32
    assert cfg.tombstone.grace_s == 7 * 24 * 3600
    assert cfg.handoff.window_s == 3 * 3600
    assert cfg.storage.sync is True
    assert cfg.limits_value() == Limits()


def test_sections_may_be_empty_or_null() -> None:
    assert from_dict({"ring": None, "limits": {}}) == Config()


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"rings": {}}, "rings"),
        ({"ring": {"shardz": 8}}, "ring.shardz"),
        ({"nodes": [{"id": "n1", "portt": 1}]}, "nodes[0].portt"),
        ({"nodes": [{"id": "n1"}, {"id": "n2", "zonee": "a"}]}, "nodes[1].zonee"),
        ({"consistency": {"levels": {"session": {"x": 1}}}}, "consistency.levels.session.x"),
        ({"consistency": {"levels": {"quorum": {}}}}, "consistency.levels.quorum"),
        ({"auth": {"keys": [{"name": "k", "sha256": SHA, "roles": "admin"}]}},
         "auth.keys[0].roles"),
    ],
)
def test_unknown_keys_are_rejected_with_their_path(data: dict[str, Any], path: str) -> None:
    e = bad(data)
    assert e.field == path
    assert e.message.startswith(f"{path}:")
    assert "unknown key" in e.message


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ({"ring": {"shards": "256"}}, "ring.shards", "integer"),
        ({"ring": {"shards": 2.5}}, "ring.shards", "integer"),
        ({"ring": {"vnodes": True}}, "ring.vnodes", "integer"),  # a bool is not an int
        ({"storage": {"sync": 1}}, "storage.sync", "true or false"),  # an int is not a bool
        ({"storage": {"sync": "yes"}}, "storage.sync", "true or false"),
        ({"cluster": {"name": 5}}, "cluster.name", "string"),
        ({"nodes": {"id": "n1"}}, "nodes", "list"),
        ({"nodes": ["n1"]}, "nodes[0]", "mapping"),
        ({"nodes": [{"id": "n1", "port": "80"}]}, "nodes[0].port", "integer"),
        ({"seeds": "127.0.0.1:1"}, "seeds", "list"),
        ({"seeds": [1]}, "seeds[0]", "string"),
        ({"consistency": {"overrides": ["critical"]}}, "consistency.overrides", "mapping"),
        ({"consistency": {"overrides": {"critical": 2}}}, "consistency.overrides.critical",
         "string"),
        ({"ring": 5}, "ring", "mapping"),
        ({"timeouts": {"rpc_ms": -1}}, "timeouts.rpc_ms", ">= 1"),
        ({"tombstone": {"grace_s": -5}}, "tombstone.grace_s", "integer"),
    ],
)
def test_wrong_types_are_named_by_path(data: dict[str, Any], path: str, words: str) -> None:
    e = bad(data)
    assert e.field == path
    assert e.message.startswith(f"{path}:")
    assert words in e.message


def test_a_top_level_that_is_not_a_mapping_is_rejected() -> None:
    assert "must be a mapping" in bad(["ring"]).message


@pytest.mark.parametrize(
    "path",
    ["ring.shards", "ring.vnodes", "replication.n", "session.max_keys", "embedder.dim",
     "timeouts.read_ms", "limits.content_bytes", "history.keep"],
)
def test_zero_is_rejected_for_positive_settings(path: str) -> None:
    section, key = path.split(".")
    e = bad({section: {key: 0}})
    assert e.field == path
    assert ">= 1" in e.message


def test_zero_is_allowed_where_it_means_something() -> None:
    cfg = from_dict({"clock": {"max_offset_ms": 0}, "tombstone": {"grace_s": 0},
                     "nodes": [{"id": "n1", "rpc_port": 0}]})
    assert cfg.clock.max_offset_ms == 0
    assert cfg.tombstone.grace_s == 0


def test_consistency_default_and_overrides_are_validated() -> None:
    assert bad({"consistency": {"default": "linearizable"}}).field == "consistency.default"
    e = bad({"consistency": {"overrides": {"critical": "strongest"}}})
    assert e.field == "consistency.overrides.critical"
    cfg = from_dict({"consistency": {"default": "strong", "overrides": {"tmp": "eventual"}}})
    assert cfg.consistency.default == "strong"


def test_quorum_sizes_may_not_exceed_n() -> None:
    e = bad({"consistency": {"levels": {"strong": {"w": 4}}}})
    assert e.field == "consistency.levels.strong.w"
    assert "replication.n=3" in e.message
    e = bad({"replication": {"n": 2}, "consistency": {"levels": {"eventual": {"r": 3}}}})
    assert e.field == "consistency.levels.eventual.r"


@pytest.mark.parametrize(
    ("level", "q"),
    [("session", {"w": 1, "r": 1}), ("session", {"w": 1}), ("strong", {"r": 1}),
     ("strong", {"w": 1, "r": 2})],
)
def test_session_and_strong_need_overlapping_quorums(level: str, q: dict[str, int]) -> None:
    e = bad({"consistency": {"levels": {level: q}}})
    assert e.field == f"consistency.levels.{level}"
    assert "w + r" in e.message


def test_eventual_may_use_non_overlapping_quorums() -> None:
    cfg = from_dict({"replication": {"n": 5}, "consistency": {"levels": {"eventual": {"w": 1}}}})
    assert cfg.policy().quorum(Level.EVENTUAL) == Quorum(1, 1)


def test_nodes_are_checked() -> None:
    e = bad({"nodes": [{"id": "n1"}, {"id": "n2"}, {"id": "n1", "port": 9000}]})
    assert e.field == "nodes"
    assert "unique" in e.message
    assert bad({"nodes": [{"id": "n1"}, {"id": ""}]}).field == "nodes[1].id"
    assert bad({"nodes": [{"id": "a#1"}]}).field == "nodes[0].id"
    assert bad({"nodes": [{"id": "a/b"}]}).field == "nodes[0].id"
    assert bad({"nodes": [{"id": "n1", "port": 70000}]}).field == "nodes[0].port"
    assert bad({"nodes": [{"host": "h"}]}).field == "nodes[0].id"  # id is required


def test_node_addresses_default_from_the_http_port() -> None:
    cfg = from_dict({"nodes": [{"id": "n1", "port": 9000}, {"id": "n2", "rpc_port": 7001}]})
    assert cfg.node("n1").rpc_address == ("127.0.0.1", 10000)
    assert cfg.node("n1").gossip_address == ("127.0.0.1", 11000)
    assert cfg.node("n2").rpc_address == ("127.0.0.1", 7001)
    with pytest.raises(ConfigError):
        cfg.node("n9")


def test_auth_keys_are_checked() -> None:
    def keys(**k: object) -> dict[str, Any]:
        return {"auth": {"keys": [{"name": "ok", "sha256": SHA}, {"name": "k", **k}]}}

    cfg = from_dict(keys(sha256=hash_key("s3cret"), role="admin", namespaces=["a"]))
    assert cfg.auth.keys[1].role == "admin"
    assert cfg.auth.keys[0].role == "agent"  # the default
    assert bad(keys(sha256=SHA, role="root")).field == "auth.keys[1].role"
    assert bad(keys(sha256="abc")).field == "auth.keys[1].sha256"
    assert bad(keys()).field == "auth.keys[1].sha256"  # required
    assert bad(keys(sha256=SHA, namespaces="a")).field == "auth.keys[1].namespaces"


def test_auth_key_digest_must_be_hex() -> None:
    e = bad({"auth": {"keys": [{"name": "k", "sha256": "z" * 64}]}})
    assert e.field == "auth.keys[0].sha256"


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_other_enumerations_are_checked() -> None:
    assert bad({"embedder": {"name": "openai"}}).field == "embedder.name"
    assert bad({"log": {"level": "verbose"}}).field == "log.level"


def test_policy_maps_the_consistency_section() -> None:
    cfg = from_dict({
        "replication": {"n": 5},
        "consistency": {
            "default": "eventual",
            "allow_weaker": True,
            "overrides": {"critical": "strong", "metric": "eventual"},
            "levels": {"strong": {"w": 4, "r": 2}, "session": {"w": 3}},
        },
    })
    pol = cfg.policy()
    assert pol.n == 5
    assert pol.default is Level.EVENTUAL
    assert pol.allow_weaker is True
    assert dict(pol.overrides) == {"critical": Level.STRONG, "metric": Level.EVENTUAL}
    assert pol.quorum(Level.STRONG) == Quorum(4, 2)
    assert pol.quorum(Level.SESSION) == Quorum(3, 3)  # r not set: majority of 5
    assert pol.quorum(Level.EVENTUAL) == Quorum(1, 1)
    assert pol.for_tags(["critical"]) is Level.STRONG


def test_default_policy() -> None:
    pol = from_dict({}).policy()
    assert pol.default is Level.SESSION
    assert pol.quorum(Level.SESSION) == Quorum(2, 2)
    assert pol.quorum(Level.STRONG) == Quorum(2, 2)
    assert not pol.allow_weaker
    assert dict(pol.overrides) == {}


def test_limits_value_maps_the_limits_section() -> None:
    cfg = from_dict({"limits": {"content_bytes": 10, "max_tags": 2, "metadata_bytes": 99}})
    lim = cfg.limits_value()
    assert (lim.content_bytes, lim.max_tags, lim.metadata_bytes) == (10, 2, 99)


# --- files --------------------------------------------------------------------------------------


def test_load_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("ring:\n  shards: 64\nnodes:\n  - id: n1\n    zone: eu-1\n")
    cfg = load(path)
    assert cfg.ring.shards == 64
    assert cfg.node("n1").zone == "eu-1"
    assert load(str(path)) == cfg


def test_load_of_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("")
    assert load(path) == Config()


def test_load_rejects_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("ring: [unclosed\n  shards: : 3\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "not valid YAML" in info.value.message


def test_load_names_the_bad_key_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("ring:\n  shardz: 64\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.field == "ring.shardz"


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_local_cluster_is_a_valid_config(tmp_path: Path, count: int) -> None:
    data = local_cluster(count, 8788, str(tmp_path))
    cfg = from_dict(data)
    assert [n.id for n in cfg.nodes] == [f"n{i + 1}" for i in range(count)]
    assert [n.port for n in cfg.nodes] == [8788 + i for i in range(count)]
    ports = {p for n in cfg.nodes for p in (n.port, n.rpc_address[1], n.gossip_address[1])}
    assert len(ports) == 3 * count  # no two listeners share a port
    assert cfg.replication.n == min(3, count)
    assert cfg.storage.path == str(tmp_path)
    assert cfg.policy().for_tags(["critical"]) is Level.STRONG
    assert cfg.policy().for_tags(["metric"]) is Level.EVENTUAL
    # What `spine up` writes survives a YAML round trip.
    assert from_dict(yaml.safe_load(yaml.safe_dump(data))) == cfg


def test_local_cluster_secret_depends_on_the_data_dir(tmp_path: Path) -> None:
    a = from_dict(local_cluster(3, 8788, str(tmp_path / "a")))
    b = from_dict(local_cluster(3, 8788, str(tmp_path / "b")))
    assert a.cluster.secret != b.cluster.secret
    assert a.cluster.secret != Config().cluster.secret


def test_gossip_section_is_checked() -> None:
    assert from_dict({"gossip": {"enabled": False}}).gossip.enabled is False
    for key in ("protocol_period_ms", "ping_timeout_ms", "ping_req_k", "suspicion_mult",
                "retransmit_mult", "push_pull_interval_ms"):
        e = bad({"gossip": {key: 0}})
        assert e.field == f"gossip.{key}" and ">= 1" in e.message
    e = bad({"gossip": {"protocol_period_ms": 400, "ping_timeout_ms": 200}})
    assert e.field == "gossip.ping_timeout_ms" and "half" in e.message
    assert from_dict({"gossip": {"protocol_period_ms": 401, "ping_timeout_ms": 200}})


@pytest.mark.parametrize(("key", "value"), [
    ("exact_max", -1), ("build_threads", 257), ("build_batch_ms", 0), ("build_busy_pct", 0),
    ("build_busy_pct", 101), ("build_backlog_max", 0), ("recall_target_pct", 0),
    ("recall_target_pct", 101), ("probe_every", -1),
])
def test_index_build_and_probe_settings_are_range_checked(key: str, value: int) -> None:
    assert bad({"index": {key: value}}).field == f"index.{key}"


def test_index_probe_settings_reach_every_index_and_survive_a_snapshot(tmp_path: Path) -> None:
    import numpy as np

    from spine.storage.index_set import IndexSet

    indexes = IndexSet(4, exact_max=0, recall_target_pct=60, probe_every=0)
    indexes.get("ns").upsert_many(["a", "b"], np.eye(2, 4, dtype=np.float32))
    indexes.save_all(tmp_path, watermark=7)
    again = IndexSet(4, exact_max=0, recall_target_pct=60, probe_every=0)
    assert again.load_all(tmp_path) == 7
    for s in (indexes, again):
        index = s.peek("ns")
        assert index is not None and (index.probe.target, index.probe.every) == (0.6, 0)
