"""Input validation with DESIGN §1's limits: bad input never reaches storage.

Every check raises `InvalidInput` or `TooLarge` naming the offending field, so the API layer can
answer a 4xx that tells the client exactly what to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from spine.core.errors import InvalidInput, TooLarge
from spine.core.expiry import DEFAULT_MAX_TTL_S

NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9:_.-]{0,63}")
AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True, slots=True)
class Limits:
    """The size limits that input validation enforces (`limits.*` in cluster.yaml)."""

    content_bytes: int = 64 * 1024
    metadata_bytes: int = 16 * 1024
    max_tags: int = 32
    batch_items: int = 1000
    max_k: int = 1000
    list_limit: int = 1000
    max_ttl_s: int = DEFAULT_MAX_TTL_S  # lifecycle.max_ttl_s: the longest ttl_s a write may ask


@dataclass(frozen=True, slots=True)
class WriteBody:
    """A validated write: what a client may set on a memory."""

    content: str
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    agent_id: str | None
    vector: list[float] | None
    ttl_s: int | None = None  # seconds until it expires; None: the tags' default, or never


MAX_METADATA_DEPTH = 32


def _depth(value: object, limit: int = MAX_METADATA_DEPTH) -> int:
    """Levels of nested objects and lists in a JSON value, counted up to `limit` + 1.

    Iterative, so a hostile 1,000-level document cannot exhaust Python's recursion limit.
    """
    depth, frontier = 0, [value]
    while depth <= limit:
        nested = [v for v in frontier if isinstance(v, dict | list)]
        if not nested:
            break
        depth += 1
        frontier = [c for v in nested for c in (v.values() if isinstance(v, dict) else v)]
    return depth


WRITE_FIELDS = frozenset({"content", "tags", "metadata", "vector", "agent_id", "ttl_s"})


def namespace(ns: object, field: str = "namespace") -> str:
    """A valid namespace, or InvalidInput."""
    if not isinstance(ns, str) or not NAMESPACE_RE.fullmatch(ns):
        raise InvalidInput("namespace must match ^[a-z0-9][a-z0-9_-]{0,63}$", field=field)
    return ns


def memory_id(mid: object, field: str = "id") -> str:
    """A valid memory id, or InvalidInput."""
    if not isinstance(mid, str) or not ID_RE.fullmatch(mid):
        raise InvalidInput("id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", field=field)
    return mid


def agent_id(value: object, field: str = "agent_id") -> str:
    """A valid agent id, or InvalidInput."""
    if not isinstance(value, str) or not AGENT_RE.fullmatch(value):
        raise InvalidInput("agent_id must match ^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$", field=field)
    return value


def tag(value: object, field: str) -> str:
    """A valid tag, or InvalidInput."""
    if not isinstance(value, str) or not TAG_RE.fullmatch(value):
        raise InvalidInput("tags must match ^[a-z0-9][a-z0-9:_.-]{0,63}$", field=field)
    return value


def tags(value: object, limits: Limits, field: str = "tags") -> tuple[str, ...]:
    """A sorted, de-duplicated tuple of valid tags."""
    if not isinstance(value, list):
        raise InvalidInput("tags must be a list of strings", field=field)
    if len(value) > limits.max_tags:
        raise TooLarge(f"at most {limits.max_tags} tags", field=field)
    return tuple(sorted({tag(t, f"{field}[{i}]") for i, t in enumerate(value)}))


def metadata(value: object, limits: Limits, field: str = "metadata") -> dict[str, Any]:
    """A JSON object no larger than `limits.metadata_bytes` once encoded."""
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object", field=field)
    if _depth(value) > MAX_METADATA_DEPTH:
        raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels", field=field)
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise InvalidInput(f"metadata is not encodable as JSON: {e}", field=field) from None
    if len(encoded) > limits.metadata_bytes:
        raise TooLarge(
            f"metadata is {len(encoded)} bytes, limit {limits.metadata_bytes}", field=field
        )
    out: dict[str, Any] = value
    return out


def vector(value: object, dim: int, field: str = "vector") -> list[float]:
    """A list of `dim` finite numbers."""
    if not isinstance(value, list):
        raise InvalidInput("vector must be a list of numbers", field=field)
    if len(value) != dim:
        raise InvalidInput(
            f"vector has {len(value)} dimensions, the cluster uses {dim}", field=field
        )
    out: list[float] = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise InvalidInput("vector must be a list of numbers", field=field)
        try:
            f = float(x)
        except OverflowError:
            raise InvalidInput("vector holds an out-of-range value", field=field) from None
        if not math.isfinite(f) or abs(f) > 3.4e38:
            raise InvalidInput("vector holds a NaN, infinite or out-of-range value", field=field)
        out.append(f)
    as64 = np.asarray(out, dtype=np.float64)
    norm = float(np.linalg.norm(as64))
    if not np.asarray(out, dtype=np.float32).any() or not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput("vector must not be all zeros (in float32)", field=field)
    if not (as64 / norm).astype(np.float32).any():
        raise InvalidInput("vector cannot be normalised in float32", field=field)
    return out


def ttl_s(value: object, limits: Limits, field: str = "ttl_s") -> int | None:
    """A write's `ttl_s`: None (absent or null), or whole seconds in 1..limits.max_ttl_s
    (`5.0` is 5: JSON has one number type)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("ttl_s must be a whole number of seconds", field=field)
    if not 1 <= value <= limits.max_ttl_s:
        raise InvalidInput(f"ttl_s must be in 1..{limits.max_ttl_s} (lifecycle.max_ttl_s)",
                           field=field)
    return value


def write_body(body: object, limits: Limits, dim: int, prefix: str = "") -> WriteBody:
    """Validate a create/replace body `{content, tags?, metadata?, vector?, agent_id?,
    ttl_s?}`."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", field=prefix.rstrip(".") or "body")
    for name in body:
        if name not in WRITE_FIELDS:
            raise InvalidInput(f"unknown field {name!r}", field=f"{prefix}{name}")
    content = body.get("content")
    if not isinstance(content, str):
        raise InvalidInput("content is required and must be a string", field=f"{prefix}content")
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > limits.content_bytes:
        raise TooLarge(
            f"content is {size} bytes, limit {limits.content_bytes}", field=f"{prefix}content"
        )
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("content is not valid UTF-8", field=f"{prefix}content") from None
    raw_agent = body.get("agent_id")
    raw_vector = body.get("vector")
    return WriteBody(
        content=content,
        tags=tags(body.get("tags", []), limits, f"{prefix}tags"),
        metadata=metadata(body.get("metadata", {}), limits, f"{prefix}metadata"),
        agent_id=None if raw_agent is None else agent_id(raw_agent, f"{prefix}agent_id"),
        vector=None if raw_vector is None else vector(raw_vector, dim, f"{prefix}vector"),
        ttl_s=ttl_s(body.get("ttl_s"), limits, f"{prefix}ttl_s"),
    )


SEARCH_FIELDS = frozenset(
    {"query", "vector", "k", "tags_all", "tags_any", "agent_id", "metadata", "min_score",
     "mode", "recency"}
)
SEARCH_MODES = ("vector", "keyword", "hybrid")
RECENCY_FIELDS = frozenset({"half_life_s", "weight"})


@dataclass(frozen=True, slots=True)
class Recency:
    """Blend recency into a search's score (DESIGN §13):
    (1 - weight) * score + weight * 0.5 ** (age_s / half_life_s)."""

    half_life_s: float
    weight: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search: text or vector, k, and filters."""

    query: str | None
    vector: list[float] | None
    k: int
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    agent_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    min_score: float | None = None
    mode: str = "vector"
    recency: Recency | None = None

    def filters_wire(self) -> list[Any]:
        """The filters as a msgpack-friendly list (the mode and the query text travel in the
        Search message's own fields)."""
        return [list(self.tags_all), list(self.tags_any), self.agent_id,
                None if self.metadata is None else dict(self.metadata), self.min_score]


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number", field=field)
    return float(value)


def recency(raw: object) -> Recency:
    """Validate `{"half_life_s": H > 0, "weight": w in [0, 1]}`."""
    if not isinstance(raw, dict):
        raise InvalidInput("recency must be an object {half_life_s, weight}", field="recency")
    for name in raw:
        if name not in RECENCY_FIELDS:
            raise InvalidInput(f"unknown field {name!r}", field=f"recency.{name}")
    for name in sorted(RECENCY_FIELDS):
        if name not in raw:
            raise InvalidInput(f"recency needs {name}", field=f"recency.{name}")
    half_life = _number(raw["half_life_s"], "recency.half_life_s")
    if half_life <= 0:
        raise InvalidInput("half_life_s must be > 0", field="recency.half_life_s")
    weight = _number(raw["weight"], "recency.weight")
    if not 0.0 <= weight <= 1.0:
        raise InvalidInput("weight must be in [0, 1]", field="recency.weight")
    return Recency(half_life, weight)


def search_mode(raw: object, query: object, vec: object, min_score: object) -> str:
    """The search's mode: as given, else hybrid for text and vector for a vector (and for a
    `min_score`, a bound on vector similarity, so `{query, min_score}` keeps meaning what it
    meant before modes existed)."""
    if raw is None:
        if query is not None and vec is None and min_score is None:
            return "hybrid"
        return "hybrid" if query is not None and vec is not None else "vector"
    if raw not in SEARCH_MODES:
        raise InvalidInput("mode must be one of vector, keyword, hybrid", field="mode")
    assert isinstance(raw, str)
    if raw == "keyword":
        if query is None:
            raise InvalidInput("keyword search needs query text", field="query")
        if vec is not None:
            raise InvalidInput("keyword search takes no vector", field="vector")
        if min_score is not None:
            raise InvalidInput("min_score bounds vector similarity; keyword search has none",
                               field="min_score")
    if raw == "hybrid" and query is None:
        raise InvalidInput("hybrid search needs query text for its keyword half", field="query")
    if raw == "vector" and query is not None and vec is not None:
        raise InvalidInput("vector search takes one of query or vector", field="query")
    return raw


def search_body(body: object, limits: Limits, dim: int) -> SearchQuery:
    """Validate `{query? | vector?, k, tags_all?, tags_any?, agent_id?, metadata?, min_score?,
    mode?, recency?}` (query and vector together only in hybrid mode)."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    for name in body:
        if name not in SEARCH_FIELDS:
            raise InvalidInput(f"unknown field {name!r}", field=name)
    query, vec = body.get("query"), body.get("vector")
    if query is None and vec is None:
        raise InvalidInput("give query or vector", field="query")
    mode = search_mode(body.get("mode"), query, vec, body.get("min_score"))
    raw_recency = body.get("recency")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise InvalidInput("query must be a non-empty string", field="query")
    if isinstance(query, str) and len(query.encode()) > limits.content_bytes:
        raise TooLarge(f"query is past {limits.content_bytes} bytes", field="query")
    k = body.get("k", 10)
    if isinstance(k, float) and k.is_integer():  # JSON has one number type: 10.0 is 10
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise InvalidInput(f"k must be an integer in 1..{limits.max_k}", field="k")
    min_score = body.get("min_score")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, int | float)
        or not math.isfinite(float(min_score))
    ):
        raise InvalidInput("min_score must be a number", field="min_score")
    meta = body.get("metadata")
    if meta is not None:
        meta = metadata(meta, limits, "metadata")
    raw_agent = body.get("agent_id")
    return SearchQuery(
        query=query,
        vector=None if vec is None else vector(vec, dim, "vector"),
        k=k,
        tags_all=tags(body.get("tags_all", []), limits, "tags_all"),
        tags_any=tags(body.get("tags_any", []), limits, "tags_any"),
        agent_id=None if raw_agent is None else agent_id(raw_agent, "agent_id"),
        metadata=meta,
        min_score=None if min_score is None else float(min_score),
        mode=mode,
        recency=None if raw_recency is None else recency(raw_recency),
    )


def matches(
    q_tags_all: tuple[str, ...] | list[str],
    q_tags_any: tuple[str, ...] | list[str],
    q_agent: str | None,
    q_meta: Mapping[str, Any] | None,
    tags_: frozenset[str],
    agent: str | None,
    meta: Mapping[str, Any],
) -> bool:
    """Whether a record's tags, agent and metadata pass a search's filters."""
    if q_tags_all and not tags_.issuperset(q_tags_all):
        return False
    if q_tags_any and tags_.isdisjoint(q_tags_any):
        return False
    if q_agent is not None and agent != q_agent:
        return False
    if q_meta:
        for key, want in q_meta.items():
            if key not in meta or meta[key] != want:
                return False
    return True


def normalise(vector: Sequence[float]) -> bytes:
    """A client vector as L2-normalised float32 bytes (the index uses cosine similarity)."""
    arr = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    if not np.isfinite(norm) or norm == 0.0:
        raise InvalidInput("vector cannot be normalised (zero or overflowing norm)",
                           field="vector")
    out = (arr / norm).astype(np.float32)
    if not np.all(np.isfinite(out)) or not np.any(out):
        raise InvalidInput("vector cannot be normalised in float32", field="vector")
    return out.tobytes()
