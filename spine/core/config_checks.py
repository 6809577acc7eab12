"""The strict half of the config loader: typed building and the checks across settings.

`build` turns parsed YAML into the frozen section dataclasses of `spine.core.config`, refusing
unknown keys and values of the wrong type with the key's path in the message
(`ring.shards: must be an integer >= 1`); `validate` checks what no single value can express
(quorums against N, unique node ids, TLS files named when TLS is on, keys' namespaces). A typo
never silently falls back to a default.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from spine.core.consistency import Level
from spine.core.errors import ConfigError, InvalidInput
from spine.core.validation import namespace

if TYPE_CHECKING:
    from spine.core.config import Config, QuorumSection, TlsSection

T = TypeVar("T")

# Zone and region names: what a cloud calls them (eu-west-1, us-east1-b), bounded.
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SITE_RULE = "letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit"

_POSITIVE = {
    "ring.shards", "ring.vnodes", "replication.n", "storage.map_size_mb", "storage.max_batch",
    "limits.content_bytes", "limits.metadata_bytes", "limits.body_bytes", "limits.batch_items",
    "limits.max_k", "limits.list_limit", "limits.max_inflight", "timeouts.connect_ms",
    "timeouts.rpc_ms", "timeouts.read_ms", "timeouts.write_ms", "timeouts.search_ms",
    "handoff.replay_interval_ms", "handoff.batch", "history.keep", "session.max_keys",
    "embedder.dim", "index.m", "index.ef_construction", "index.ef_search",
    "antientropy.interval_ms", "antientropy.shards_per_round", "antientropy.max_keys_per_s",
    "index.persist_interval_s", "liveness.probe_interval_ms", "gossip.protocol_period_ms",
    "gossip.ping_timeout_ms", "gossip.ping_req_k", "gossip.suspicion_mult",
    "gossip.retransmit_mult", "gossip.push_pull_interval_ms", "ring.sync_interval_ms",
    "ring.transfer_max_keys_per_s", "limits.list_page_bytes", "limits.header_timeout_ms",
    "limits.body_timeout_ms", "limits.keepalive_timeout_s",
    "rpc.handshake_timeout_ms", "rpc.max_pending_handshakes", "rpc.max_frame_bytes",
    "rpc.max_inflight_per_connection",
    "tls.handshake_timeout_ms",
}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A config section's resolved field types: the same for every build, and resolving them
    (`typing.get_type_hints`) was most of a config load's CPU."""
    return typing.get_type_hints(cls)


def build(cls: type[T], data: object, path: str) -> T:
    """An instance of the dataclass `cls` from `data`, every field checked (ConfigError naming
    the key path otherwise)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: must be a mapping", field=path)
    hints = _hints(cls)  # type: ignore[arg-type]  # a class is hashable
    known = {f.name: f for f in fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            raise ConfigError(f"{where}: unknown key", field=where)
        if known[key].metadata.get("per_region") and isinstance(value, dict):
            kwargs[key] = _per_region(value, where)
            continue
        kwargs[key] = _coerce(hints[key], value, where)
    for name, f in known.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            where = f"{path}.{name}" if path else name
            raise ConfigError(f"{where}: required", field=where)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list", field=where)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping", field=where)
        return {str(k): _coerce(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false", field=where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer", field=where)
        if value < 1 and where in _POSITIVE:
            raise ConfigError(f"{where}: must be an integer >= 1", field=where)
        if value < 0:
            raise ConfigError(f"{where}: must be an integer >= 0", field=where)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string", field=where)
        return value
    return value


def _per_region(value: dict[Any, Any], where: str) -> dict[str, int]:
    """A map region → count (`replication.n` as NetworkTopologyStrategy takes it); each count
    an integer >= 1, refused naming its key (`replication.n.eu-west`)."""
    if not value:
        raise ConfigError(f"{where}: an integer, or a map region -> replicas with at least one"
                          " region", field=where)
    out: dict[str, int] = {}
    for region, count in value.items():
        key = f"{where}.{region}"
        if not isinstance(region, str) or not SITE_RE.fullmatch(region):
            raise ConfigError(f"{key}: {region!r} is not a region name ({SITE_RULE})", field=key)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{key}: must be an integer >= 1", field=key)
        out[region] = count
    return out


def _validate_topology(cfg: Config) -> None:
    """Zone and region names well formed; a region map names only regions that have nodes,
    asks no region for more replicas than it has nodes, and covers every node's region."""
    for i, nd in enumerate(cfg.nodes):
        for part in ("zone", "region"):
            name = getattr(nd, part)
            if name and not SITE_RE.fullmatch(name):
                where = f"nodes[{i}].{part}"
                raise ConfigError(f"{where}: {name!r} is not a {part} name ({SITE_RULE})",
                                  field=where)
    by_region = cfg.replication.regions
    if not by_region:
        return
    counts: dict[str, int] = {}
    for nd in cfg.nodes:
        counts[nd.region] = counts.get(nd.region, 0) + 1
    zones = {nd.zone for nd in cfg.nodes if nd.zone}
    known = ", ".join(repr(r) for r in sorted(counts) if r) or "none: no node has a region"
    for region, want in by_region.items():
        where = f"replication.n.{region}"
        if region not in counts:
            what = "a zone, not a region" if region in zones else "no node's region"
            raise ConfigError(f"{where}: {region!r} is {what} (regions: {known})", field=where)
        if want > counts[region]:
            raise ConfigError(f"{where}: {want} replicas, but region {region!r} has"
                              f" {counts[region]} node{'s' if counts[region] != 1 else ''}",
                              field=where)
    for i, nd in enumerate(cfg.nodes):
        if nd.region not in by_region:
            where = f"nodes[{i}].region"
            shown = repr(nd.region) if nd.region else "none"
            raise ConfigError(f"{where}: {shown}, but replication.n places replicas only in"
                              f" {', '.join(sorted(by_region))}: name this node's region there",
                              field=where)


def validate(cfg: Config) -> Config:
    """Cross-field checks that a single value cannot express."""
    levels = {lv.label for lv in Level}
    names = ", ".join(lv.label for lv in Level)
    if cfg.consistency.default not in levels:
        raise ConfigError(f"consistency.default: must be one of {names}",
                          field="consistency.default")
    for tag_name, lvl in cfg.consistency.overrides.items():
        if lvl not in levels:
            where = f"consistency.overrides.{tag_name}"
            raise ConfigError(f"{where}: must be one of {names}", field=where)
    n = cfg.replication.n
    for name in ("eventual", "session", "strong"):
        q: QuorumSection = getattr(cfg.consistency.levels, name)
        for part in ("w", "r"):
            v = getattr(q, part)
            if v > n:
                where = f"consistency.levels.{name}.{part}"
                raise ConfigError(f"{where}: {v} exceeds replication.n={n}", field=where)
    pol = cfg.policy()
    for level in (Level.SESSION, Level.STRONG):
        q2 = pol.quorum(level)
        if q2.w + q2.r <= n:
            where = f"consistency.levels.{level.label}"
            raise ConfigError(f"{where}: w + r must exceed n for {level.label}", field=where)
    _validate_topology(cfg)
    ids = [nd.id for nd in cfg.nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError("nodes: node ids must be unique", field="nodes")
    for i, nd in enumerate(cfg.nodes):
        if not nd.id or "#" in nd.id or "/" in nd.id:
            raise ConfigError(f"nodes[{i}].id: must be non-empty without '#' or '/'",
                              field=f"nodes[{i}].id")
        for port_name in ("port", "rpc_port", "gossip_port"):
            if getattr(nd, port_name) > 65535:
                where = f"nodes[{i}].{port_name}"
                raise ConfigError(f"{where}: must be a port number", field=where)
    if not 2 * cfg.gossip.ping_timeout_ms < cfg.gossip.protocol_period_ms:
        raise ConfigError("gossip.ping_timeout_ms: must be less than half of"
                          " gossip.protocol_period_ms", field="gossip.ping_timeout_ms")
    if not 2 <= cfg.gossip.max_members <= 65_536:
        raise ConfigError("gossip.max_members: must be an integer from 2 to 65536",
                          field="gossip.max_members")
    if not 64 * 1024 <= cfg.rpc.max_frame_bytes < 2**32:
        raise ConfigError("rpc.max_frame_bytes: must be between 65536 and 4294967295",
                          field="rpc.max_frame_bytes")
    if cfg.embedder.name not in ("hash", "minilm", "minilm-int8", "minilm-static",
                                 "minilm-torch"):
        raise ConfigError("embedder.name: must be hash, minilm, minilm-int8, minilm-static or"
                          " minilm-torch",
                          field="embedder.name")
    if cfg.embedder.name != "hash" and cfg.embedder.dim != 384:
        raise ConfigError("embedder.dim: must be 384 for the minilm embedders",
                          field="embedder.dim")
    for setting, low, high in (("threads", 0, 256), ("queue_texts", 1, 1 << 20),
                           ("cache_queries", 0, 1 << 20)):
        if not low <= getattr(cfg.embedder, setting) <= high:
            raise ConfigError(f"embedder.{setting}: must be an integer from {low} to {high}",
                              field=f"embedder.{setting}")
    for setting, low, high in (("exact_max", 0, 1 << 24), ("build_threads", 0, 256),
                               ("build_batch_ms", 1, 10_000), ("build_busy_pct", 1, 100),
                               ("build_backlog_max", 1, 1 << 30), ("recall_target_pct", 1, 100),
                               ("probe_every", 0, 1 << 20)):
        if not low <= getattr(cfg.index, setting) <= high:
            raise ConfigError(f"index.{setting}: must be an integer from {low} to {high}",
                              field=f"index.{setting}")
    if cfg.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level: must be debug, info, warning or error", field="log.level")
    for i, key in enumerate(cfg.auth.keys):
        if key.role not in ("agent", "admin"):
            where = f"auth.keys[{i}].role"
            raise ConfigError(f"{where}: must be agent or admin", field=where)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key.sha256):
            where = f"auth.keys[{i}].sha256"
            raise ConfigError(f"{where}: must be a hex SHA-256 of the key", field=where)
        for j, ns in enumerate(key.namespaces):
            if ns != "*" and not _valid_namespace(ns):
                where = f"auth.keys[{i}].namespaces[{j}]"
                raise ConfigError(f"{where}: {ns!r} is not a valid namespace name", field=where)
    digests: dict[str, int] = {}
    for i, key in enumerate(cfg.auth.keys):
        first = digests.setdefault(key.sha256.lower(), i)
        if first != i:
            where = f"auth.keys[{i}].sha256"
            raise ConfigError(f"{where}: the same key digest as auth.keys[{first}]", field=where)
    _validate_tls(cfg.tls)
    return cfg


def _validate_tls(tls: TlsSection) -> None:
    """A listener with TLS on needs a certificate and key; mutual TLS also a CA to check with.

    Whether the files exist and hold what they should is checked when the node builds its SSL
    contexts (spine/tls.py), at start-up, naming the same keys.
    """
    if tls.min_version not in ("1.2", "1.3"):
        raise ConfigError("tls.min_version: must be 1.2 or 1.3", field="tls.min_version")
    if not (tls.http or tls.rpc or tls.gossip):
        return
    for name in ("cert_file", "key_file"):
        if not getattr(tls, name):
            raise ConfigError(f"tls.{name}: required when tls.http, tls.rpc or tls.gossip is on",
                              field=f"tls.{name}")
    if (tls.rpc or tls.gossip) and not tls.ca_file:
        raise ConfigError("tls.ca_file: required when tls.rpc or tls.gossip is on (peers are"
                          " checked against it)", field="tls.ca_file")


def _valid_namespace(ns: str) -> bool:
    try:
        namespace(ns)
    except InvalidInput:
        return False
    return True
