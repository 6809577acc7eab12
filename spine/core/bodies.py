"""The JSON bodies of the HTTP API (DESIGN §11) as msgspec structs, defined once.

The server decodes every request body into these types (`decoder`), so the shape, the types,
the patterns and the bounds a type can state are checked while the JSON is parsed; what no type
can say (a vector's float32 norm, metadata's depth and encoded size, content's UTF-8 byte count,
which of `query`, `vector` and `mode` go together) is the second pass in `spine.core.validation`.
`/openapi.json` takes its schemas from the same types (`schemas`), so the document says what the
decoder checks; the few rules of the second pass that JSON Schema can state are added to it here
(`SEARCH_COMBINATIONS`, the oneOf of `BatchItem`, a vector's `contains`), next to the types.

Bounds that come from cluster.yaml (`limits.*`, `embedder.dim`, `paxos.max_lease_ttl_ms`) are
part of the types: each request body has a static base (`WriteFields`, ...) that code is typed
against, and a subclass per configuration (`write_type(limits, dim)`, ...) that carries the
bounds, built once per configuration and cached.

Replies are structs too (`spine.core.replies`): `schemas` generates theirs beside the requests'.
"""

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from spine.core.errors import InvalidInput, SpineError, TooLarge
from spine.core.expiry import DEFAULT_MAX_TTL_S
from spine.core.leases import HOLDER_RE
from spine.core.replies import CURSOR_FORMAT as CURSOR_FORMAT
from spine.core.replies import REPLIES

# Names, fully matched. `\Z`, not `$`: Python's `$` also matches before a final newline, and
# msgspec checks patterns with Python's `re`. The document says `$` (ECMA 262 has no `\Z`, and
# its `$` is the end of the text): `schemas` rewrites it.
NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
TAG_RE = re.compile(r"[a-z0-9][a-z0-9:_.-]{0,63}")
AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# A query has a letter or digit: the hash embedder finds no word in punctuation alone.
QUERY_WORD = r"[^\W_]"

FLOAT32_MAX = 3.4e38
# A component at least this large survives float32 and normalisation (validation.check_vector).
TINY = 1e-30
MAX_METADATA_DEPTH = 32
# The numbers metadata may hold: a record stores integers in 64 bits (signed, or unsigned).
METADATA_NUMBERS = (-(2**63), 2**64 - 1)


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


def _full(regex: re.Pattern[str]) -> str:
    return rf"^{regex.pattern}\Z"


Tag = Annotated[str, Meta(pattern=_full(TAG_RE))]
Agent = Annotated[str, Meta(pattern=_full(AGENT_RE))]
MemoryId = Annotated[str, Meta(pattern=_full(ID_RE))]
Float32 = Annotated[float, Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


def whole(lo: int, hi: int) -> Any:
    """A whole number in lo..hi. JSON has one number type, so 5.0 is 5: the field decodes as a
    float that is a multiple of 1 (the second pass makes it an int), which JSON Schema calls
    an integer (`schemas` says so)."""
    return Annotated[float, Meta(ge=lo, le=hi, multiple_of=1)]


# ------------------------------------------------------------------ requests: static bases


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused (400 naming the field)."""


class WriteFields(Body, kw_only=True):
    """A create or replace: what a client may set on a memory."""

    content: str
    tags: list[Tag] = []
    metadata: dict[str, Any] = {}
    vector: list[Float32] | None = None
    agent_id: Agent | None = None
    # seconds until it expires (DESIGN §13); null: the tags' default, else never
    ttl_s: float | None = None


class DedupFields(Body, kw_only=True):
    """`"dedup": {"min_score", "tags_all"?, "agent_id"?}` (DESIGN §13): answer the nearest live
    memory scoring at least min_score instead of creating one (best effort)."""

    min_score: Annotated[float, Meta(ge=0, le=1)]
    tags_all: list[Tag] = []
    agent_id: Agent | None = None


class CreateFields(WriteFields, kw_only=True):
    """A create (POST, minted id), optionally with dedup: "exact" (a content-derived id, create
    only) or semantic. A PUT names its id, which dedup would contradict."""

    dedup: Literal["exact"] | DedupFields | UnsetType = UNSET


class BatchWriteFields(WriteFields, kw_only=True):
    """A `_batch` upsert: an id and a write body."""

    id: MemoryId


class BatchDelete(Body, kw_only=True):
    """A `_batch` delete: an id and `"delete": true`, nothing else."""

    id: MemoryId
    delete: Literal[True]


class BatchFields(Body, kw_only=True):
    """`POST .../_batch`: upserts and deletes, each item decoded on its own (`BatchWrite` or
    `BatchDelete`) so that an error names the item."""

    items: list[Raw]


class Recency(Body, kw_only=True):
    """Blend recency into a search's score (DESIGN §13):
    (1 - weight) * score + weight * 0.5 ** (age_s / half_life_s)."""

    half_life_s: Annotated[float, Meta(gt=0)]
    weight: Annotated[float, Meta(ge=0, le=1)]


class SearchFields(Body, kw_only=True):
    """A search (DESIGN §14): text, a vector or both (hybrid), k and filters. The mode defaults
    to hybrid for text (vector with min_score), vector for a vector; keyword takes text only and
    no min_score (it bounds a similarity)."""

    query: str | None = None
    vector: list[Float32] | None = None
    k: float = 10
    tags_all: list[Tag] = []
    tags_any: list[Tag] = []
    agent_id: Agent | None = None
    metadata: dict[str, Any] | None = None
    min_score: float | None = None
    mode: Literal["vector", "keyword", "hybrid"] | None = None
    recency: Recency | None = None


class LeaseFields(Body, kw_only=True):
    """Acquire or renew a lease (DESIGN §12) for ttl_ms milliseconds."""

    holder: Annotated[str, Meta(pattern=_full(HOLDER_RE))]
    ttl_ms: float


# ------------------------------------------------------------------ requests: per configuration

T = TypeVar("T", bound=Struct)
_REQUIRED = object()  # a field of `_bound` without a default


def _bound(name: str, base: type[T], fields: list[tuple[str, Any, Any]]) -> type[T]:
    """`base` with these fields re-declared (same names and defaults, tighter types)."""
    spec = [(n, t) if d is _REQUIRED else (n, t, d) for n, t, d in fields]
    made = msgspec.defstruct(name, spec, bases=(base,), kw_only=True, forbid_unknown_fields=True,
                             namespace={"__doc__": base.__doc__, "__module__": __name__})
    return cast(type[T], made)


def _tags(limits: Limits) -> Any:
    return Annotated[list[Tag], Meta(max_length=limits.max_tags)]


def _metadata(limits: Limits) -> Any:
    """A JSON object; its size, depth and numbers are the second pass's (validation.metadata),
    the numbers' range stated by `MetadataValue`."""
    return Annotated[dict[str, Any], Meta(
        description=f"<= {limits.metadata_bytes} bytes encoded, <= {MAX_METADATA_DEPTH} levels"
                    " deep",
        extra_json_schema={"additionalProperties": {"$ref": _ref("MetadataValue")}})]


def _metadata_value() -> dict[str, Any]:
    """Any JSON value whose numbers are within METADATA_NUMBERS (validation._depth)."""
    lo, hi = METADATA_NUMBERS
    return {"description": f"any JSON value whose numbers are within {lo}..{hi}", "anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "number", "minimum": lo, "maximum": hi},
        {"type": "array", "items": {"$ref": _ref("MetadataValue")}},
        {"type": "object", "additionalProperties": {"$ref": _ref("MetadataValue")}}]}


def _vector(dim: int) -> Any:
    """`dim` float32 numbers, not all zero in float32 (the `contains`, checked by the second
    pass: a component past TINY in size survives float32 and normalisation)."""
    nonzero = {"anyOf": [{"type": "number", "minimum": TINY},
                         {"type": "number", "maximum": -TINY}]}
    return Annotated[list[Float32], Meta(min_length=dim, max_length=dim,
                                         extra_json_schema={"contains": nonzero})]


def _write_fields(limits: Limits, dim: int) -> list[tuple[str, Any, Any]]:
    # Content is bounded in UTF-8 bytes and JSON Schema counts characters: the two agree on
    # ASCII, and non-ASCII text reaches the byte limit (413, the second pass) sooner.
    content = Annotated[str, Meta(max_length=limits.content_bytes,
                                  description=f"<= {limits.content_bytes} bytes of UTF-8")]
    return [("content", content, _REQUIRED), ("tags", _tags(limits), []),
            ("metadata", _metadata(limits), {}), ("vector", _vector(dim) | None, None),
            ("ttl_s", whole(1, limits.max_ttl_s) | None, None)]


@functools.cache
def write_type(limits: Limits, dim: int) -> type[WriteFields]:
    """`WriteBody` (PUT) under these limits and vector dimension."""
    return _bound("WriteBody", WriteFields, _write_fields(limits, dim))


@functools.cache
def dedup_type(limits: Limits) -> type[DedupFields]:
    """`DedupSpec` (semantic dedup) under these limits."""
    return _bound("DedupSpec", DedupFields, [("tags_all", _tags(limits), [])])


@functools.cache
def dedup_union(limits: Limits) -> Any:
    """What `dedup` decodes as: "exact" or a `DedupSpec` (absent: no dedup; null is refused)."""
    return Literal["exact"] | dedup_type(limits)


@functools.cache
def create_type(limits: Limits, dim: int) -> type[CreateFields]:
    """`CreateBody` (POST) under these limits and vector dimension."""
    return _bound("CreateBody", CreateFields,
                  [*_write_fields(limits, dim), ("dedup", dedup_union(limits) | UnsetType, UNSET)])


@functools.cache
def batch_write_type(limits: Limits, dim: int) -> type[BatchWriteFields]:
    """`BatchWrite` (an upsert item of `_batch`) under these limits and vector dimension."""
    return _bound("BatchWrite", BatchWriteFields, _write_fields(limits, dim))


@functools.cache
def batch_type(limits: Limits) -> type[BatchFields]:
    """`BatchBody` under these limits. At least one item: checked once the body is decoded
    (validation.decode_batch), so an unknown field beside `"items": []` is the error named."""
    item = Annotated[Raw, Meta(extra_json_schema={"$ref": _ref("BatchItem")})]
    items = Annotated[list[item], Meta(max_length=limits.batch_items,
                                       extra_json_schema={"minItems": 1})]
    return _bound("BatchBody", BatchFields, [("items", items, _REQUIRED)])


@functools.cache
def search_type(limits: Limits, dim: int) -> type[SearchFields]:
    """`SearchBody` under these limits and vector dimension."""
    query = Annotated[str, Meta(pattern=QUERY_WORD, max_length=limits.content_bytes)]
    return _bound("SearchBody", SearchFields, [
        ("query", query | None, None), ("vector", _vector(dim) | None, None),
        # k defaults to 10, or to max_k when that is lower
        ("k", whole(1, limits.max_k), min(10, limits.max_k)), ("tags_all", _tags(limits), []),
        ("tags_any", _tags(limits), []), ("metadata", _metadata(limits) | None, None)])


@functools.cache
def lease_type(max_ttl_ms: int) -> type[LeaseFields]:
    """`LeaseRequest` with ttl_ms up to `paxos.max_lease_ttl_ms`."""
    return _bound("LeaseRequest", LeaseFields, [("ttl_ms", whole(1, max_ttl_ms), _REQUIRED)])


@functools.cache
def decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    """The JSON decoder of one body type (one per type: they are reusable and thread-safe)."""
    return msgspec.json.Decoder(kind)


# ------------------------------------------------------------------ the document's schemas


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


# validation.search_mode as JSON Schema: query, vector or both (hybrid only), a null counting as
# absent; keyword takes text only and no min_score.
SEARCH_COMBINATIONS: list[dict[str, Any]] = [
    {"required": ["query"], "properties": {
        "query": {"type": "string"}, "vector": {"type": "null"},
        "mode": {"enum": ["vector", "hybrid", None]}}},
    {"required": ["query", "mode"], "properties": {
        "query": {"type": "string"}, "vector": {"type": "null"},
        "mode": {"const": "keyword"}, "min_score": {"type": "null"}}},
    {"required": ["vector"], "properties": {
        "vector": {"type": "array"}, "query": {"type": "null"},
        "mode": {"enum": ["vector", None]}}},
    {"required": ["query", "vector"], "properties": {
        "query": {"type": "string"}, "vector": {"type": "array"},
        "mode": {"enum": ["hybrid", None]}}},
]


def _ecma(node: Any) -> Any:
    """A generated schema as OpenAPI 3.1 (JSON Schema 2020-12, ECMA 262 patterns) says it: `\\Z`
    is `$`; a number that is a multiple of 1 is an integer."""
    if isinstance(node, list):
        return [_ecma(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _ecma(x) for k, x in node.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = out["pattern"].replace("\\Z", "$")
    if out.get("type") == "number" and out.get("multipleOf") == 1:
        del out["multipleOf"]
        out["type"] = "integer"
    return out


def schemas(limits: Limits, dim: int, max_lease_ttl_ms: int) -> dict[str, Any]:
    """`components.schemas` of /openapi.json for a node with these settings: every request and
    reply body, generated from the types above."""
    requests: list[Any] = [
        write_type(limits, dim), create_type(limits, dim), batch_type(limits),
        batch_write_type(limits, dim), BatchDelete, search_type(limits, dim),
        lease_type(max_lease_ttl_ms)]
    _, found = msgspec.json.schema_components([*requests, *REPLIES],
                                              ref_template=_ref("{name}"))
    out: dict[str, Any] = _ecma(found)
    # validation.decode_batch: an item is a BatchWrite or else a BatchDelete
    out["BatchItem"] = {"oneOf": [out.pop("BatchWrite"), out.pop("BatchDelete")]}
    out["SearchBody"]["anyOf"] = SEARCH_COMBINATIONS
    out["MetadataValue"] = _metadata_value()
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ decode errors

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]*)`")
_VECTOR_ITEM = re.compile(r"(^|\.)vector\[\d+\]$")
_INDEX = re.compile(r"\[\d+\]$")
# Fields whose upper bound is a size limit: past it is 413 too_large, not 400.
SIZE_FIELDS = frozenset({"content", "query", "tags", "tags_all", "tags_any", "items"})


def refusal(err: msgspec.MsgspecError, prefix: str = "") -> SpineError:
    """The 4xx for a body the decoder refused, naming the field as the rest of the API does
    (`content`, `tags[1]`, `items[3].content`, `recency.weight`, `vector` for any of its
    numbers); `prefix` is where the decoded value sits (`items[3]`, `dedup`)."""
    if not isinstance(err, msgspec.ValidationError):  # (ValidationError is a DecodeError)
        return InvalidInput(f"malformed JSON: {err}", field=prefix or "body")
    text = str(err)
    at = _AT.search(text)
    path, message = (at["path"], text[:at.start()]) if at else ("", text)
    named = _NAMED.match(message)
    if named is not None:
        path = f"{path}.{named['name']}"
        message = (f"{named['name']} is required" if named["what"] == "missing required"
                   else f"unknown field {named['name']!r}")
    field = _VECTOR_ITEM.sub(r"\1vector", (prefix + path).lstrip(".")) or "body"
    message = message.replace("`float`", "`number`").replace(
        "a multiple of 1.0", "a whole number")
    leaf = _INDEX.sub("", field).rsplit(".", 1)[-1]
    if "of length <=" in message and leaf in SIZE_FIELDS:
        return TooLarge(f"{field}: {message}", field=field)
    return InvalidInput(f"{field}: {message}", field=field)


def decode(raw: bytes, kind: type[T], prefix: str = "") -> T:
    """`raw` JSON decoded into `kind`, or the 4xx naming the field."""
    try:
        out: T = decoder(kind).decode(raw)
        return out
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise refusal(e, prefix) from None


def convert(value: object, kind: type[T], prefix: str = "") -> T:
    """An already-parsed JSON value (a dict from Python code) converted into `kind`, checked as
    `decode` checks bytes, or the 4xx naming the field."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        raise refusal(e, prefix) from None
