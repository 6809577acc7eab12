"""A key's kept versions across its live replicas (``GET …/memories/{id}/history``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from spine.core.clock import Version
from spine.core.errors import QuorumUnavailable
from spine.core.messages import History
from spine.core.model import Record
from spine.ports import RecordStore, Transport


def local_history(store: RecordStore, namespace: str, mid: str) -> list[Any]:
    """This replica's current version and kept history, as wire pairs."""
    out: list[Any] = []
    cur = store.get(namespace, mid)
    if cur is not None:
        out.append([cur.to_wire(), False])
    out.extend([h.record.to_wire(), h.concurrent] for h in store.history(namespace, mid))
    return out


async def gather_history(
    replicas: Sequence[str],
    rpc: Transport,
    namespace: str,
    mid: str,
    timeout: float,
) -> list[tuple[Record, bool]]:
    """Versions kept by the (live) ``replicas`` (this node answers from its own handler),
    newest first; a version any replica flags as concurrent stays flagged. QuorumUnavailable
    when none answers."""
    found: dict[Version, tuple[Record, bool]] = {}
    msg = History(namespace, mid)
    replies = await asyncio.gather(*(rpc.call(n, msg, timeout) for n in replicas),
                                   return_exceptions=True)
    ok = [r for r in replies if not isinstance(r, BaseException)]
    if not ok:
        raise QuorumUnavailable("no replica answered", reached=0, needed=1)
    for reply in ok:
        for wire, concurrent in reply:
            rec = Record.from_wire(wire)
            prev = found.get(rec.version)
            found[rec.version] = (rec, concurrent or (prev[1] if prev else False))
    return [found[v] for v in sorted(found, reverse=True)]
