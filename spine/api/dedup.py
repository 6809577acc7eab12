"""Dedup on create (DESIGN §13): `POST /v1/ns/{ns}/memories` with a `"dedup"` field.

Agents often write the same fact twice (two agents observe the same event; one agent retries).
A check-then-insert done by the client races: both check, both insert. Two modes:

- `"dedup": "exact"` derives the id from the namespace and the *normalised* content
  (`exact_id`), so the same fact always lands on the same key, and creates it with
  `If-None-Match: *` semantics: a consensus round on that key (`Coordinator.conditional`), so
  concurrent identical creates through any nodes are serialised and exactly one creates the
  memory (201). Every other one gets the round's 412, reads the key at `strong` level (a read
  linearizable with the round, so it sees the winner) and answers 200 with that record and
  `"deduplicated": true`. Only the content counts: tags, metadata, agent_id and vector of a later
  duplicate are dropped, and the record answered is the existing one. Retrying such a create is
  idempotent, so an unknown outcome (504) is retried here, a bounded number of times.
- `"dedup": {"min_score": s, "tags_all"?: [...], "agent_id"?: str}` searches the namespace first
  (the node's search path, k = 1, those filters, the caller's session so its own recent writes
  count) and answers 200 with the nearest live memory when its similarity is at least `s`,
  writing nothing; else it creates as usual. This is a check-then-insert: **best effort** —
  two concurrent near-duplicates (or one racing an index that has not caught up) may both be
  created. Use "exact" where that matters.

Normalisation (`normalise_content`): Unicode NFC (canonically equivalent encodings of the same
text, such as a precomposed "é" and "e" + combining accent, are one text by Unicode's own
definition), then every run of whitespace becomes one space and the ends are stripped (line
wrapping and indentation do not change a fact). Case is kept, and NFKC is not used: "US" and "us",
`getId` and `getid`, "x²" and "x2" can be different facts, and a false merge silently loses a
memory while a missed one only leaves a duplicate.

The id is `sha256-` and the first 32 hex digits (128 bits) of SHA-256 over a domain tag, the
namespace and the normalised content: a valid memory id (`validation.ID_RE`), the same at every
node and release, and one that says nothing about equal content in other namespaces.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from msgspec import UNSET

from spine.core import bodies as b
from spine.core import validation as v
from spine.core.clock import Version
from spine.core.conditions import Condition
from spine.core.consistency import Level
from spine.core.errors import Conflict, InvalidInput, PreconditionFailed, Timeout
from spine.core.requests import ItemResult, WriteOp
from spine.core.session import HEADER as SESSION
from spine.core.session import SessionToken

if TYPE_CHECKING:
    from spine.api.http import Services
    from spine.cluster.coordinator import Coordinator

FIELD = "dedup"
EXACT = "exact"
SEMANTIC_FIELDS = tuple(b.DedupFields.__struct_fields__)
ID_PREFIX = "sha256-"
ID_HEX = 32  # 128 bits: collisions need ~2**64 distinct facts in one namespace
_DOMAIN = b"spine-dedup-exact-v1\x00"
# Rounds of one exact create: a 504 (outcome unknown) is retried, and a 412 whose record is gone
# by the time it is read (deleted or expired in between) is tried again as a create.
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Exact:
    """`"dedup": "exact"`: content-derived id, create only."""


@dataclass(frozen=True, slots=True)
class Semantic:
    """`"dedup": {"min_score": s, ...}`: answer the nearest live memory scoring at least s."""

    min_score: float
    tags_all: tuple[str, ...] = ()
    agent_id: str | None = None


Dedup = Exact | Semantic


# ------------------------------------------------------------------ pure


def normalise_content(text: str) -> str:
    """The content as exact dedup compares it: NFC, whitespace runs collapsed to one space,
    ends stripped, case kept (see the module docstring for why)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def exact_id(namespace: str, content: str) -> str:
    """The memory id of `content` in `namespace` under exact dedup."""
    h = hashlib.sha256(_DOMAIN)
    h.update(namespace.encode("utf-8"))
    h.update(b"\x00")  # namespaces hold no NUL: (ns, content) pairs never run together
    h.update(normalise_content(content).encode("utf-8", errors="surrogatepass"))
    return ID_PREFIX + h.hexdigest()[:ID_HEX]


def spec_of(value: Any) -> Dedup | None:
    """The dedup a decoded create body asks for (its `dedup` field: UNSET when absent, "exact"
    or a decoded `DedupSpec`)."""
    if value is UNSET:
        return None
    if value == EXACT:
        return Exact()
    assert isinstance(value, b.DedupFields)
    return Semantic(min_score=float(value.min_score),
                    tags_all=tuple(sorted(set(value.tags_all))), agent_id=value.agent_id)


def parse(value: object, limits: v.Limits) -> Dedup:
    """A `dedup` value given as Python values, or InvalidInput naming the field (`dedup`,
    `dedup.min_score`, ...): converted into the type a create body decodes it as."""
    spec = spec_of(b.convert(value, b.dedup_union(limits), FIELD))
    assert spec is not None
    return spec


def take(body: object, limits: v.Limits) -> tuple[Dedup | None, object]:
    """The parsed `dedup` of a create body (None when absent) and the body without it, for
    `validation.write_body` (which refuses a body that is not an object)."""
    if not isinstance(body, dict) or FIELD not in body:
        return None, body
    rest = dict(body)
    return parse(rest.pop(FIELD), limits), rest


def on_put() -> InvalidInput:
    """The 400 for a PUT body with `dedup`: a PUT names its id, which dedup would contradict
    (exact dedup derives the id; semantic dedup may answer another one)."""
    return InvalidInput("dedup applies to POST /v1/ns/{ns}/memories only: a PUT names its id;"
                        " use If-None-Match: * to create a named id only if absent", field=FIELD)


def refuse_on_put(body: object) -> object:
    """`body` unchanged, or `on_put()` when it holds `dedup`."""
    if isinstance(body, dict) and FIELD in body:
        raise on_put()
    return body


def search_request(body: v.WriteBody, spec: Semantic) -> dict[str, Any] | None:
    """The search body that finds a semantic duplicate of `body` (its vector if it has one,
    else its content), or None when there is nothing to compare (blank content, no vector)."""
    # vector mode: min_score bounds cosine similarity (a hybrid score is a rank fusion, not one)
    out: dict[str, Any] = {"mode": "vector", "k": 1, "min_score": spec.min_score}
    if body.vector is not None:
        out["vector"] = body.vector
    elif body.content.strip():
        out["query"] = body.content
    else:
        return None
    if spec.tags_all:
        out["tags_all"] = list(spec.tags_all)
    if spec.agent_id is not None:
        out["agent_id"] = spec.agent_id
    return out


def best_hit(result: Any, min_score: float) -> dict[str, Any] | None:
    """The public record of a search answer's top result when live and scoring at least
    `min_score`, else None."""
    results = result.get("results") if isinstance(result, dict) else None
    if not results:
        return None
    top = results[0]
    rec = top.get("record")
    if not isinstance(rec, dict) or rec.get("deleted") or float(top["score"]) < min_score:
        return None
    return rec


# ------------------------------------------------------------------ HTTP


class CreateHost(Protocol):
    """What the create handler of `spine.api.http` offers this module."""

    svc: Services
    c: Coordinator

    async def _write_one(
        self, request: web.Request, ns: str, op: WriteOp, cond: Condition | None = None
    ) -> tuple[ItemResult, SessionToken]: ...

    def _reply(
        self, request: web.Request, data: Any, token: SessionToken, status: int = 200,
        record: Any = None,
    ) -> web.Response: ...

    def _session(self, token: SessionToken | None) -> SessionToken: ...


def _token(request: web.Request, max_keys: int) -> SessionToken | None:
    raw = request.headers.get(SESSION)
    return None if raw is None else SessionToken.decode(raw, max_keys)


async def create(
    h: CreateHost, request: web.Request, ns: str, body: v.WriteBody, spec: Dedup
) -> web.Response:
    """Answer a create that carries `dedup` (the body and namespace already validated)."""
    if isinstance(spec, Exact):
        return await _create_exact(h, request, ns, body)
    found = await _nearest(h, request, ns, body, spec)
    if found is not None:
        return found
    item, token = await h._write_one(request, ns, WriteOp(h.svc.mint_id(), body))
    return _created(h, request, item, token)


def _created(h: CreateHost, request: web.Request, item: ItemResult,
             token: SessionToken) -> web.Response:
    assert item.result is not None
    rec = item.result.record
    return h._reply(request, {**rec.public(), "deduplicated": False}, token, 201, rec)


async def _create_exact(
    h: CreateHost, request: web.Request, ns: str, body: v.WriteBody
) -> web.Response:
    mid = exact_id(ns, body.content)
    op = WriteOp(mid, body)
    unknown: Timeout | None = None
    for _ in range(ATTEMPTS):
        try:
            item, token = await h._write_one(request, ns, op, Condition(if_none_match=True))
        except PreconditionFailed:  # a live record holds this content's id: answer it
            unknown = None
            existing = await _read_strong(h, request, ns, mid)
            if existing is not None:
                return existing
            continue  # deleted or expired since the round: create it again
        except Timeout as e:  # the round's fate is unknown; the next round settles it either way
            unknown = e
            continue
        return _created(h, request, item, token)
    if unknown is not None:  # still unknown: say so (504), as a single round would
        raise unknown
    raise Conflict(f"memory {mid!r} was deleted under {ATTEMPTS} create attempts in a row;"
                   " retry", field="id", id=mid)


async def _read_strong(
    h: CreateHost, request: web.Request, ns: str, mid: str
) -> web.Response | None:
    """200 with the key's live record read at strong level (deduplicated), or None."""
    token = _token(request, h.svc.session_max_keys)
    rec, level, coordinator = await h.c.get(ns, mid, Level.STRONG, token)
    request["level"] = level.label
    request["coordinator"] = coordinator
    if rec is None or rec.deleted:
        return None
    out = h._session(token)
    out.observe(f"{ns}/{mid}", rec.version)
    return h._reply(request, {**rec.public(), "deduplicated": True}, out, 200, rec)


async def _nearest(
    h: CreateHost, request: web.Request, ns: str, body: v.WriteBody, spec: Semantic
) -> web.Response | None:
    """200 with the nearest live memory scoring at least min_score, or None (create it)."""
    query = search_request(body, spec)
    if query is None:
        return None
    if h.svc.search is None:
        raise InvalidInput("semantic dedup needs search, which this node does not serve",
                           field=f"{FIELD}.min_score")
    token = _token(request, h.svc.session_max_keys)
    raw_level = request.headers.get("Spine-Consistency")
    level = None if raw_level is None else Level.parse(raw_level)
    try:
        result = await h.svc.search(ns, query, token, level)
    except InvalidInput as e:
        if e.field == "query":  # the embedder finds no words in the content: nothing is near
            return None
        raise
    rec = best_hit(result, spec.min_score)
    if rec is None:
        return None
    version = Version.decode(rec["version"])
    out = h._session(token)
    out.observe(f"{ns}/{rec['id']}", version)
    resp = h._reply(request, {**rec, "deduplicated": True}, out, 200)
    resp.headers["ETag"] = f'"{rec["version"]}"'
    return resp
