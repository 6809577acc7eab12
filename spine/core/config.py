"""cluster.yaml: every setting with its default (one frozen dataclass per section), and how a
file becomes a Config (`load`, `from_dict`).

The strict checks live in `spine.core.config_checks` (unknown keys and bad values are refused
with the key's path), the environment overlay in `spine.core.config_env`.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from spine.core.config_checks import build, validate
from spine.core.config_env import overlay_env
from spine.core.consistency import Level, Policy, Quorum
from spine.core.errors import ConfigError
from spine.core.expiry import DEFAULT_MAX_TTL_S, HARD_MAX_TTL_S, Lifecycle
from spine.core.ring import Replicas
from spine.core.validation import TAG_RE, Limits


@dataclass(frozen=True)
class NodeConfig:
    """One member: id, listen address, HTTP / RPC / gossip ports, zone and region (failure
    domains: a zone inside a region; "" when not configured)."""

    id: str
    host: str = "127.0.0.1"
    port: int = 8788
    rpc_port: int = 0
    gossip_port: int = 0
    zone: str = ""
    region: str = ""

    @property
    def rpc_address(self) -> tuple[str, int]:
        """Where this node's internal RPC listens (defaults to HTTP port + 1000)."""
        return self.host, self.rpc_port or self.port + 1000

    @property
    def gossip_address(self) -> tuple[str, int]:
        """Where this node's SWIM gossip listens (defaults to HTTP port + 2000)."""
        return self.host, self.gossip_port or self.port + 2000


@dataclass(frozen=True)
class ClusterSection:
    name: str = "spine-local"
    secret: str = "spine-local-secret"
    # Secrets still accepted (never used to sign) while a rotation rolls through the cluster,
    # as memberlist's keyring does: add the new secret here on every node, then make it `secret`
    # (the old one moves here), then drop the old one: one rolling restart each (README).
    previous_secrets: list[str] = field(default_factory=list)

    def keyring(self) -> list[str]:
        """Every secret accepted from peers, the signing one first."""
        return [self.secret, *(s for s in self.previous_secrets if s != self.secret)]


@dataclass(frozen=True)
class RingSection:
    shards: int = 256
    vnodes: int = 128
    sync_interval_ms: int = 1000
    drop_grace_s: int = 60
    transfer_max_keys_per_s: int = 5000


@dataclass(frozen=True)
class ReplicationSection:
    """`n` in cluster.yaml: the replicas of every key, an integer or a map region → replicas in
    that region (Cassandra's NetworkTopologyStrategy). Read back, `n` is always the total N (what
    quorum sizes are computed on) and `regions` the map ({} for an integer)."""

    n: int = field(default=3, metadata={"per_region": True})
    regions: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        raw: object = self.n
        if isinstance(raw, Mapping):
            object.__setattr__(self, "regions", {str(k): v for k, v in raw.items()})
            object.__setattr__(self, "n", sum(raw.values()))

    @property
    def replicas(self) -> Replicas:
        """What the ring places by: the region map when there is one, else N."""
        return dict(self.regions) if self.regions else self.n


@dataclass(frozen=True)
class QuorumSection:
    w: int = 0
    r: int = 0


@dataclass(frozen=True)
class LevelsSection:
    eventual: QuorumSection = field(default_factory=lambda: QuorumSection(1, 1))
    session: QuorumSection = field(default_factory=QuorumSection)
    strong: QuorumSection = field(default_factory=QuorumSection)


@dataclass(frozen=True)
class ConsistencySection:
    default: str = "session"
    allow_weaker: bool = False
    overrides: dict[str, str] = field(default_factory=dict)
    levels: LevelsSection = field(default_factory=LevelsSection)


@dataclass(frozen=True)
class StorageSection:
    path: str = "./data"
    sync: bool = True
    map_size_mb: int = 8192
    max_batch: int = 512
    # Writes answer 507 while the store's filesystem has less than this free (0: only ENOSPC).
    reserve_mb: int = 64


@dataclass(frozen=True)
class LimitsSection:
    content_bytes: int = 64 * 1024
    metadata_bytes: int = 16 * 1024
    max_tags: int = 32
    body_bytes: int = 32 * 1024 * 1024
    batch_items: int = 1000
    max_k: int = 1000
    list_limit: int = 1000
    max_inflight: int = 2048
    # Quotas and slow-client limits (issue 14); see cluster.yaml.example for each.
    max_namespaces: int = 10_000
    list_page_bytes: int = 4 * 1024 * 1024
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    keepalive_timeout_s: int = 75
    client_inflight: int = 512
    client_rate: int = 0
    client_burst: int = 0
    client_connections: int = 1024


@dataclass(frozen=True)
class TimeoutsSection:
    connect_ms: int = 500
    rpc_ms: int = 2000
    read_ms: int = 2000
    write_ms: int = 2000
    search_ms: int = 2000


@dataclass(frozen=True)
class RpcSection:
    """Internal RPC limits: bounded work before the handshake, and the frame cap."""

    handshake_timeout_ms: int = 5000
    max_pending_handshakes: int = 64
    max_frame_bytes: int = 64 * 1024 * 1024
    max_inflight_per_connection: int = 1024


@dataclass(frozen=True)
class HandoffSection:
    window_s: int = 3 * 3600
    replay_interval_ms: int = 500
    batch: int = 256
    enabled: bool = True


@dataclass(frozen=True)
class AntiEntropySection:
    enabled: bool = True
    interval_ms: int = 5000
    shards_per_round: int = 16
    max_keys_per_s: int = 2000


@dataclass(frozen=True)
class TombstoneSection:
    grace_s: int = 7 * 24 * 3600


@dataclass(frozen=True)
class HistorySection:
    keep: int = 10


@dataclass(frozen=True)
class SessionSection:
    max_keys: int = 32


@dataclass(frozen=True)
class ClockSection:
    max_offset_ms: int = 500


@dataclass(frozen=True)
class PaxosSection:
    """Conditional writes and leases (DESIGN §12). The two `unsafe_` switches exist for the
    jepsen_style teeth only: each breaks a guarantee on purpose, so a checker can be seen to
    catch it. Never set them on a cluster that holds data you care about."""

    max_lease_ttl_ms: int = 600_000
    unsafe_accept_any_ballot: bool = False
    unsafe_ignore_fences: bool = False


@dataclass(frozen=True)
class FeedSection:
    """The change feed (DESIGN §15): the longest long poll, the largest page, the stored bytes a
    member's page may carry, and how many long polls one node lets wait at once."""

    max_wait_s: int = 30
    max_limit: int = 1000
    page_bytes: int = 4 * 1024 * 1024
    max_waiters: int = 256

    def __post_init__(self) -> None:
        bounds = {"max_wait_s": (0, 60), "max_limit": (1, 1000),
                  "page_bytes": (1024, 64 * 1024 * 1024), "max_waiters": (0, 65536)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"feed.{name}: must be an integer from {lo} to {hi}",
                                  field=f"feed.{name}")


@dataclass(frozen=True)
class LifecycleSection:
    """Expiry (DESIGN §13): per-tag default TTLs, the longest TTL a write may ask for, and the
    background sweep that turns expired records into tombstones."""

    ttl_s_by_tag: dict[str, int] = field(default_factory=dict)
    max_ttl_s: int = DEFAULT_MAX_TTL_S
    sweep_interval_ms: int = 1000
    sweep_keys_per_s: int = 5000

    def __post_init__(self) -> None:
        if not 1 <= self.max_ttl_s <= HARD_MAX_TTL_S:
            raise ConfigError(f"lifecycle.max_ttl_s: must be an integer from 1 to"
                              f" {HARD_MAX_TTL_S}", field="lifecycle.max_ttl_s")
        for name in ("sweep_interval_ms", "sweep_keys_per_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lifecycle.{name}: must be an integer >= 1",
                                  field=f"lifecycle.{name}")
        for tag_name, ttl in self.ttl_s_by_tag.items():
            where = f"lifecycle.ttl_s_by_tag.{tag_name}"
            if not TAG_RE.fullmatch(tag_name):
                raise ConfigError(f"{where}: {tag_name!r} is not a valid tag", field=where)
            if not 1 <= ttl <= self.max_ttl_s:
                raise ConfigError(f"{where}: must be an integer from 1 to lifecycle.max_ttl_s"
                                  f" ({self.max_ttl_s})", field=where)

    def value(self) -> Lifecycle:
        """The expiry rules these settings describe."""
        return Lifecycle(dict(self.ttl_s_by_tag), self.max_ttl_s)


@dataclass(frozen=True)
class EmbedderSection:
    name: str = "hash"
    dim: int = 384
    threads: int = 0  # 0: the host's cores divided among the nodes configured on that host
    queue_texts: int = 4096  # texts waiting to be embedded before 429 overloaded
    cache_queries: int = 4096  # query texts whose vectors are kept (LRU); 0 turns it off


@dataclass(frozen=True)
class IndexSection:
    m: int = 24
    ef_construction: int = 64
    ef_search: int = 128
    persist_interval_s: int = 30
    exact_max: int = 10_000  # a namespace or filtered set this small is searched exactly
    build_threads: int = 0  # hnswlib threads per graph build; 0: cores / co-located nodes
    build_batch_ms: int = 20  # longest a build batch holds a namespace's index (searches wait)
    build_busy_pct: int = 50  # share of time the builder builds while the backlog is small
    build_backlog_max: int = 20000  # records waiting per namespace past which it builds flat out
    recall_target_pct: int = 95  # a graph whose probed recall@k is below this is searched exactly
    probe_every: int = 64  # every n-th graph search is also run exactly to probe recall; 0: never


@dataclass(frozen=True)
class LivenessSection:
    probe_interval_ms: int = 1000


@dataclass(frozen=True)
class GossipSection:
    """SWIM membership (DESIGN §8); the fields mirror `spine.core.swim_config.SwimConfig`."""

    enabled: bool = True
    protocol_period_ms: int = 500
    ping_timeout_ms: int = 200
    ping_req_k: int = 3
    suspicion_mult: int = 4
    retransmit_mult: int = 4
    push_pull_interval_ms: int = 10000
    # Authenticated and bounded gossip (issue 14); see cluster.yaml.example.
    max_members: int = 1024
    freshness_margin_ms: int = 10_000


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    role: str = "agent"
    namespaces: list[str] = field(default_factory=list)
    max_namespaces: int = 0  # namespaces this key may create on a node; 0: only the node's limit


@dataclass(frozen=True)
class AuthSection:
    keys: list[ApiKey] = field(default_factory=list)
    insecure: bool = False
    agents_see_cluster: bool = False  # agent keys may read /metrics and /v1/cluster*


@dataclass(frozen=True)
class TlsSection:
    """Transport security (DESIGN §16): TLS on the HTTP API, mutual TLS on internal RPC.

    `{node}` in cert_file / key_file is replaced by the node id, so one cluster.yaml can name
    every node's own certificate.
    """

    http: bool = False
    rpc: bool = False
    gossip: bool = False
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    check_hostname: bool = True
    min_version: str = "1.2"
    handshake_timeout_ms: int = 10_000

    def cert_path(self, node_id: str) -> str:
        """This node's certificate chain file."""
        return self.cert_file.replace("{node}", node_id)

    def key_path(self, node_id: str) -> str:
        """This node's private key file."""
        return self.key_file.replace("{node}", node_id)


@dataclass(frozen=True)
class ShutdownSection:
    drain_ms: int = 2000


@dataclass(frozen=True)
class LogSection:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    """The whole of cluster.yaml."""

    cluster: ClusterSection = field(default_factory=ClusterSection)
    nodes: list[NodeConfig] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    ring: RingSection = field(default_factory=RingSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
    consistency: ConsistencySection = field(default_factory=ConsistencySection)
    storage: StorageSection = field(default_factory=StorageSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    timeouts: TimeoutsSection = field(default_factory=TimeoutsSection)
    rpc: RpcSection = field(default_factory=RpcSection)
    handoff: HandoffSection = field(default_factory=HandoffSection)
    tombstone: TombstoneSection = field(default_factory=TombstoneSection)
    antientropy: AntiEntropySection = field(default_factory=AntiEntropySection)
    history: HistorySection = field(default_factory=HistorySection)
    session: SessionSection = field(default_factory=SessionSection)
    clock: ClockSection = field(default_factory=ClockSection)
    paxos: PaxosSection = field(default_factory=PaxosSection)
    lifecycle: LifecycleSection = field(default_factory=LifecycleSection)
    feed: FeedSection = field(default_factory=FeedSection)
    embedder: EmbedderSection = field(default_factory=EmbedderSection)
    index: IndexSection = field(default_factory=IndexSection)
    liveness: LivenessSection = field(default_factory=LivenessSection)
    gossip: GossipSection = field(default_factory=GossipSection)
    auth: AuthSection = field(default_factory=AuthSection)
    log: LogSection = field(default_factory=LogSection)
    shutdown: ShutdownSection = field(default_factory=ShutdownSection)
    tls: TlsSection = field(default_factory=TlsSection)

    def node(self, node_id: str) -> NodeConfig:
        """The config of one member, or ConfigError naming it."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise ConfigError(f"nodes: no node with id {node_id!r}", field="nodes")

    def policy(self) -> Policy:
        """The consistency policy these settings describe."""
        n = self.replication.n
        quorums: dict[Level, Quorum] = {}
        for level in (Level.EVENTUAL, Level.SESSION, Level.STRONG):
            q: QuorumSection = getattr(self.consistency.levels, level.label)
            default = Policy(n=n).quorum(level)
            quorums[level] = Quorum(q.w or default.w, q.r or default.r)
        return Policy(
            n=n,
            default=Level.parse(self.consistency.default),
            overrides={t: Level.parse(v) for t, v in self.consistency.overrides.items()},
            allow_weaker=self.consistency.allow_weaker,
            quorums=quorums,
        )

    def limits_value(self) -> Limits:
        """The validation limits these settings describe."""
        lim = self.limits
        return Limits(
            content_bytes=lim.content_bytes,
            metadata_bytes=lim.metadata_bytes,
            max_tags=lim.max_tags,
            batch_items=lim.batch_items,
            max_k=lim.max_k,
            list_limit=lim.list_limit,
            max_ttl_s=self.lifecycle.max_ttl_s,
        )


def from_dict(data: object) -> Config:
    """Build and validate a Config from parsed YAML."""
    return validate(build(Config, data, ""))


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate cluster.yaml, with `SPINE_…` variables from `env` laid over it
    (`spine.core.config_env`)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if env is not None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping")
        sections = frozenset(f.name for f in fields(Config))
        data = overlay_env(data, env, sections, lambda p: Path(p).read_text(), is_string_setting)
    return from_dict(data)


def is_string_setting(path: list[str]) -> bool:
    """Whether the setting at `path` (YAML keys from the top) is a string."""
    tp: Any = Config
    for key in path:
        if is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if key not in hints:
                return False
            tp = hints[key]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return False
    return tp is str


def hash_key(secret: str) -> str:
    """The SHA-256 hex digest stored in cluster.yaml for an API key."""
    return hashlib.sha256(secret.encode()).hexdigest()
