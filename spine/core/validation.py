"""Input validation with DESIGN §1's limits: bad input never reaches storage.

Request bodies are decoded into the structs of `spine.core.bodies`, which check their shape,
types, patterns and bounds while the JSON is parsed (and give /openapi.json its schemas); this
module is the second pass over a decoded body, for what no type can say: content's UTF-8 byte
count, metadata's depth and encoded size, a vector that float32 turns to zeros, and which search
fields go together. Every check raises `InvalidInput` or `TooLarge` naming the offending field,
so the API layer can answer a 4xx that tells the client exactly what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
from msgspec import Raw

from spine.core import bodies as b

# re-exported: these names were defined here before the bodies were
from spine.core.bodies import AGENT_RE as AGENT_RE
from spine.core.bodies import ID_RE as ID_RE
from spine.core.bodies import MAX_METADATA_DEPTH as MAX_METADATA_DEPTH
from spine.core.bodies import NAMESPACE_RE as NAMESPACE_RE
from spine.core.bodies import TAG_RE as TAG_RE
from spine.core.bodies import Limits as Limits
from spine.core.errors import InvalidInput, TooLarge


@dataclass(frozen=True, slots=True)
class WriteBody:
    """A validated write: what a client may set on a memory."""

    content: str
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    agent_id: str | None
    vector: list[float] | None
    ttl_s: int | None = None  # seconds until it expires; None: the tags' default, or never


def _depth(value: object, limit: int = MAX_METADATA_DEPTH) -> int:
    """Levels of nested objects and lists in a JSON value, counted up to `limit` + 1; one more
    than `limit` too when a number in it is past the range a stored integer has
    (`bodies.METADATA_NUMBERS`: JSON Schema cannot tell 1e20 from 100000000000000000000, so the
    range holds for every number).

    Iterative, so a hostile 1,000-level document cannot exhaust Python's recursion limit.
    """
    lo, hi = b.METADATA_NUMBERS
    depth, frontier = 0, [value]
    while depth <= limit:
        children: list[object] = []
        nested = False
        for v in frontier:  # one plain loop a level: this runs for every write
            if isinstance(v, str):
                continue
            if isinstance(v, dict):
                children.extend(v.values())
                nested = True
            elif isinstance(v, list):
                children.extend(v)
                nested = True
            elif isinstance(v, int | float) and not isinstance(v, bool) and not lo <= v <= hi:
                return limit + 1
        if not nested:
            break
        depth += 1
        frontier = children
    return depth


WRITE_FIELDS = frozenset(b.WriteFields.__struct_fields__)


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
        lo, hi = b.METADATA_NUMBERS
        raise InvalidInput(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels, or holds a"
                           f" number outside {lo}..{hi}", field=field)
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
    return _nonzero(out, field)


def _nonzero(vec: list[float], field: str) -> list[float]:
    """A decoded vector (`dim` numbers in float32's range) that float32 and normalisation do not
    turn to zeros, or InvalidInput: what a type cannot say about it."""
    as64 = np.asarray(vec, dtype=np.float64)
    norm = float(np.linalg.norm(as64))
    if not np.asarray(as64, dtype=np.float32).any() or not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput("vector must not be all zeros (in float32)", field=field)
    if not (as64 / norm).astype(np.float32).any():
        raise InvalidInput("vector cannot be normalised in float32", field=field)
    return vec


def _content(content: str, limits: Limits, field: str) -> str:
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > limits.content_bytes:
        raise TooLarge(f"content is {size} bytes, limit {limits.content_bytes}", field=field)
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("content is not valid UTF-8", field=field) from None
    return content


def check_write(body: b.WriteFields, limits: Limits, dim: int, prefix: str = "") -> WriteBody:
    """The second pass over a decoded write body (`prefix`: where it sits, `items[3].`)."""
    return WriteBody(
        content=_content(body.content, limits, f"{prefix}content"),
        tags=tuple(sorted(set(body.tags))),
        metadata=metadata(body.metadata, limits, f"{prefix}metadata"),
        agent_id=body.agent_id,
        vector=None if body.vector is None else _nonzero(body.vector, f"{prefix}vector"),
        ttl_s=None if body.ttl_s is None else int(body.ttl_s),
    )


def _plain(body: object, prefix: str) -> object:
    """`body` when no field of it is a tuple: JSON has none, and msgspec.convert would take one
    for a list (a Python caller's tuple of tags is refused, as it always was)."""
    if isinstance(body, dict):
        for name, value in body.items():
            if isinstance(value, tuple):
                raise InvalidInput(f"{name} must be a JSON value, not a tuple",
                                   field=f"{prefix}{name}")
    return body


def write_body(body: object, limits: Limits, dim: int, prefix: str = "") -> WriteBody:
    """Validate a create/replace body `{content, tags?, metadata?, vector?, agent_id?,
    ttl_s?}` given as Python values (`decode_write` takes the JSON bytes)."""
    where = prefix.rstrip(".")
    decoded = b.convert(_plain(body, prefix), b.write_type(limits, dim), where)
    return check_write(decoded, limits, dim, prefix)


def decode_write(raw: bytes, limits: Limits, dim: int) -> WriteBody:
    """A PUT body: the JSON decoded into `WriteBody` and checked."""
    return check_write(b.decode(raw, b.write_type(limits, dim)), limits, dim)


def decode_create(raw: bytes, limits: Limits, dim: int) -> tuple[WriteBody, b.CreateFields]:
    """A POST body: the checked write and the decoded body (whose `dedup` the API reads)."""
    body = b.decode(raw, b.create_type(limits, dim))
    return check_write(body, limits, dim), body


RefuseItem = Callable[[int, object], None]


def decode_batch(raw: bytes, limits: Limits, dim: int,
                 refuse: RefuseItem | None = None) -> list[tuple[str, WriteBody | None]]:
    """A `_batch` body as `(id, write)` pairs, a None write for a delete. Each item decodes as
    a `BatchWrite`; one that does not and has a `delete` is a `BatchDelete` or refused naming
    it. `refuse(i, item)`, when given, sees each item that is neither first (the API refuses
    conditions on batch items with its own message)."""
    items = b.decode(raw, b.batch_type(limits)).items
    if not items:
        raise InvalidInput("items must be a non-empty list", field="items")
    writes = b.batch_write_type(limits, dim)
    out: list[tuple[str, WriteBody | None]] = []
    for i, item in enumerate(items):
        where = f"items[{i}]"
        try:
            body = b.decoder(writes).decode(item)
        except msgspec.ValidationError as e:
            out.append((_batch_delete(item, i, e, refuse), None))
            continue
        out.append((body.id, check_write(body, limits, dim, f"{where}.")))
    return out


def _batch_delete(item: Raw, i: int, err: msgspec.ValidationError,
                  refuse: RefuseItem | None) -> str:
    """The id of a `_batch` item that is not a write: a delete, else the 4xx naming why."""
    where = f"items[{i}]"
    parsed = msgspec.json.decode(item)
    if refuse is not None:
        refuse(i, parsed)
    if not isinstance(parsed, dict) or "delete" not in parsed:
        raise b.refusal(err, where)
    if parsed["delete"] is not True:
        raise InvalidInput("delete must be true when present", field=f"{where}.delete")
    try:
        deleted: b.BatchDelete = b.decoder(b.BatchDelete).decode(item)
        return str(deleted.id)
    except msgspec.ValidationError as e:
        refused = b.refusal(e, where)
        if refused.field is not None and refused.field.endswith(f"{where}.id"):
            raise refused from None
        raise InvalidInput("a delete item holds only id and delete", field=where) from None


SEARCH_FIELDS = frozenset(b.SearchFields.__struct_fields__)
SEARCH_MODES = ("vector", "keyword", "hybrid")


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


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number", field=field)
    return value


def search_mode(raw: str | None, query: str | None, vec: object, min_score: object) -> str:
    """The search's mode: as given, else hybrid for text and vector for a vector (and for a
    `min_score`, a bound on vector similarity, so `{query, min_score}` keeps meaning what it
    meant before modes existed)."""
    if raw is None:
        if query is not None and vec is None and min_score is None:
            return "hybrid"
        return "hybrid" if query is not None and vec is not None else "vector"
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


def check_search(body: b.SearchFields, limits: Limits) -> SearchQuery:
    """The second pass over a decoded search body: which fields go together (the document's
    `SEARCH_COMBINATIONS`), the query's UTF-8 size, metadata, the vector's float32 norm."""
    query, vec = body.query, body.vector
    if query is None and vec is None:
        raise InvalidInput("give query or vector", field="query")
    mode = search_mode(body.mode, query, vec, body.min_score)
    if query is not None and len(query.encode("utf-8", errors="surrogatepass")) > (
            limits.content_bytes):
        raise TooLarge(f"query is past {limits.content_bytes} bytes", field="query")
    rec = body.recency
    return SearchQuery(
        query=query,
        vector=None if vec is None else _nonzero(vec, "vector"),
        k=int(body.k),
        tags_all=tuple(sorted(set(body.tags_all))),
        tags_any=tuple(sorted(set(body.tags_any))),
        agent_id=body.agent_id,
        metadata=None if body.metadata is None else metadata(body.metadata, limits, "metadata"),
        min_score=None if body.min_score is None else _finite(body.min_score, "min_score"),
        mode=mode,
        recency=None if rec is None else Recency(
            _finite(rec.half_life_s, "recency.half_life_s"), rec.weight),
    )


def decode_search(raw: bytes, limits: Limits, dim: int) -> b.SearchFields:
    """A search body's JSON decoded into `SearchBody` (`search_body` is its second pass)."""
    return b.decode(raw, b.search_type(limits, dim))


def search_body(body: object, limits: Limits, dim: int) -> SearchQuery:
    """Validate `{query? | vector?, k, tags_all?, tags_any?, agent_id?, metadata?, min_score?,
    mode?, recency?}` (query and vector together only in hybrid mode): a decoded `SearchBody`,
    or Python values converted into one."""
    if not isinstance(body, b.SearchFields):
        body = b.convert(_plain(body, ""), b.search_type(limits, dim))
    return check_search(body, limits)


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
