"""Request bodies off the wire: the raw bytes of a request, decoded into the structs of
`spine.core.bodies` and checked by `spine.core.validation`, with the messages of the API's own
rules (dedup on a PUT, conditions on `_batch` items) where they apply."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from spine.api import coordination as coord
from spine.api import dedup
from spine.core import validation as v
from spine.core.errors import InvalidInput, TooLarge
from spine.core.requests import WriteOp


async def raw_body(request: web.Request) -> bytes:
    """The request's body (read already, within limits.body_timeout_ms), or 400/413 naming
    the body when it is absent or past limits.body_bytes."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("request body is past limits.body_bytes", field="body") from None
    if not raw:
        raise InvalidInput("a JSON body is required", field="body")
    return raw


def put_body(raw: bytes, limits: v.Limits, dim: int) -> v.WriteBody:
    """A PUT's write; `dedup` is refused with its own reason (a PUT names its id)."""
    try:
        return v.decode_write(raw, limits, dim)
    except InvalidInput as e:
        if e.field == dedup.FIELD:
            raise dedup.on_put() from None
        raise


def create_body(raw: bytes, limits: v.Limits, dim: int) -> tuple[v.WriteBody, dedup.Dedup | None]:
    """A POST's write and the dedup it asks for (None: none)."""
    body, decoded = v.decode_create(raw, limits, dim)
    return body, dedup.spec_of(decoded.dedup)


def batch_ops(raw: bytes, headers: Mapping[str, str], limits: v.Limits,
              dim: int) -> list[WriteOp]:
    """A `_batch`'s writes and deletes, in order; no conditions (headers or item fields)."""
    coord.refuse_condition_headers(headers)
    items = v.decode_batch(raw, limits, dim, coord.refuse_item_conditions)
    return [WriteOp(mid, body) for mid, body in items]
