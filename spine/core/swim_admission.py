"""Admission: the identity check a member must pass to join a SWIM view.

The shell supplies the check (cluster name, shard count, embedder: see
`spine.cluster.membership.identity_check`); `Admission` asks it once per version of a member
(incarnation, address, meta) and remembers the answer, so a refused node that keeps gossiping
costs one check, not one per message. The verdicts kept are capped (a flood of invented node
ids must not grow them without bound): past the cap the oldest is forgotten, which costs at
most a second check of that node.
"""

from __future__ import annotations

from collections.abc import Callable

from spine.core.swim_messages import Member, Meta

AcceptHook = Callable[[Member], str | None]
"""Identity check: None admits the member, a string refuses it and says why."""


class Admission:
    """The cached verdicts of an optional identity check."""

    def __init__(self, accept: AcceptHook | None, cap: int = 4096) -> None:
        self._accept = accept
        self._cap = cap
        self._verdicts: dict[str, tuple[tuple[int, str, Meta], str | None]] = {}

    def verdict(self, m: Member) -> tuple[str | None, bool]:
        """The check's answer for this version of `m` (None: admitted), and whether it was
        asked just now (a new refusal is worth reporting and a Refuse message)."""
        if self._accept is None:
            return None, False
        key = (m.incarnation, m.address, m.meta)
        cached = self._verdicts.get(m.node_id)
        if cached is not None and cached[0] == key:
            return cached[1], False
        reason = self._accept(m)
        self._verdicts.pop(m.node_id, None)  # re-inserted last: the newest verdict
        while len(self._verdicts) >= self._cap:
            del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[m.node_id] = (key, reason)
        return reason, reason is not None

    def refusal(self, node_id: str) -> str | None:
        """The last refusal of `node_id`, if its last version checked was refused."""
        cached = self._verdicts.get(node_id)
        return cached[1] if cached is not None else None

    def __len__(self) -> int:
        return len(self._verdicts)
