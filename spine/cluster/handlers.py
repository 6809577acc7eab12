"""The internal RPC handler table: one explicit function per message tag (no getattr dispatch)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from spine.cluster.coordinator import Coordinator
from spine.cluster.fanout import list_handler
from spine.cluster.replication import Replicator
from spine.cluster.rpc import Handler
from spine.cluster.version_history import local_history
from spine.core.conditions import condition_from_wire
from spine.core.consistency import Level
from spine.core.errors import InvalidInput
from spine.core.messages import (
    Apply,
    Forward,
    History,
    Ping,
    Read,
    Search,
    Tag,
    records_to_wire,
)
from spine.core.requests import WriteOp, body_from_wire, item_to_wire
from spine.core.session import SessionToken, WriteSeq
from spine.ports import RecordStore
from spine.storage.lmdb_store import Outcome


def build_handlers(
    node_id: str,
    store: RecordStore,
    replicator: Replicator,
    coordinator: Coordinator,
    session_max_keys: int,
    search: Callable[[Search], Awaitable[list[Any]]],
) -> dict[Tag, Handler]:
    """The handlers a node serves to its peers."""

    async def ping(_peer: str, _msg: Ping) -> str:
        return node_id

    async def apply(_peer: str, msg: Apply) -> list[bool]:
        applied = await replicator.apply_local(msg.records) if msg.records else []
        replicator.noticed(msg.notices)
        return [a.outcome is Outcome.APPLIED for a in applied]

    async def read(_peer: str, msg: Read) -> list[Any]:
        return records_to_wire(store.get_many(msg.keys))

    async def history(_peer: str, msg: History) -> list[Any]:
        return local_history(store, msg.namespace, msg.id)

    async def forward(_peer: str, msg: Forward) -> dict[str, Any]:
        token = (
            SessionToken.decode(msg.token, session_max_keys) if msg.token is not None else None
        )
        level = None if msg.level is None else Level.from_code(msg.level)
        out: dict[str, Any] = {"coordinator": node_id}
        if msg.op == "get":
            got = await coordinator.read(msg.namespace, msg.id, level, token, forwarded=True)
            rec = got.record
            out.update(record=None if rec is None else rec.to_wire(), level=got.level.code,
                       settled=got.settled)
            if token is not None:
                got.merge_into(token, f"{msg.namespace}/{msg.id}")
        elif msg.op == "write":
            ops = [WriteOp(i, None if b is None else body_from_wire(b)) for i, b in msg.body]
            by = None if msg.by is None else WriteSeq.parse(msg.by)
            items = await coordinator.write(
                msg.namespace, ops, level, token, msg.agent, forwarded=True,
                deadline=msg.deadline, by=by,
            )
            out["results"] = [item_to_wire(x) for x in items]
            for x in items:
                if token is not None and x.result is not None:
                    token.wrote(f"{msg.namespace}/{x.id}", x.result.record.version, by)
        elif msg.op == "cas":  # a conditional write, sent to the node that led its key's rounds
            if not isinstance(msg.body, list) or len(msg.body) != 2:
                raise InvalidInput("a forwarded conditional write is [body, condition]",
                                   field="body")
            raw, cond = msg.body
            op = WriteOp(msg.id, None if raw is None else body_from_wire(raw))
            by = None if msg.by is None else WriteSeq.parse(msg.by)
            item = await coordinator.conditional(
                msg.namespace, op, condition_from_wire(cond), token, msg.agent, by,
                forwarded=True, deadline=msg.deadline,
            )
            out["results"] = [item_to_wire(item)]
            if token is not None and item.result is not None:
                token.wrote(f"{msg.namespace}/{msg.id}", item.result.record.version, by)
        else:
            raise InvalidInput(f"unknown forwarded op {msg.op!r}", field="op")
        # The caller's token with what this request saw (a node of an older release merges it).
        out["token"] = token.encode() if token is not None else None
        return out

    async def search_local(_peer: str, msg: Search) -> list[Any]:
        return await search(msg)

    table: dict[Tag, Any] = {
        Tag.SEARCH: search_local,
        Tag.PING: ping,
        Tag.APPLY: apply,
        Tag.READ: read,
        Tag.HISTORY: history,
        Tag.LIST: list_handler(store),
        Tag.FORWARD: forward,
    }
    return table
