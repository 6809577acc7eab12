"""Test-only link delay and loss (issue 17 item 5): what a link file says, parsed and bounded.

Latency between zones and regions cannot be had on one box without netem (root). Instead a
node started with `SPINE_TEST_LINK_FILE` (`spine.runtime.follow_link_file`) re-reads a JSON file
naming, per peer node id, how its own outgoing traffic to that peer is treated:

    {"n2": {"delay_ms": 60, "jitter_ms": 5, "loss": 0.0}, "n3": {"loss": 1.0}}

Every RPC request and gossip packet this node sends to `n2` waits 60 ms plus a uniform draw in
[0, 5) ms first; with probability `loss` it is dropped instead (the caller times out, as after a
lost frame). The delay is one-way: replies come back undelayed, so an RPC round trip from this
node to the peer takes `delay_ms` more, and a gossip ping's round trip takes the delays of both
directions (each node's own file). Absent keys mean 0.

The bounds keep a bad file from hanging a node: each delay and jitter at most MAX_DELAY_MS (and
their sum too), loss in [0, 1], at most MAX_PEERS entries, at most MAX_FILE_BYTES. A file that
breaks any of them is refused whole (`LinkFileError`): the node then applies no delay at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DELAY_MS", "MAX_FILE_BYTES", "MAX_PEERS", "MAX_PEER_ID", "Link", "LinkFileError",
    "parse_links",
]

MAX_DELAY_MS = 10_000
MAX_PEERS = 1024
MAX_PEER_ID = 256  # characters in a peer's node id
MAX_FILE_BYTES = 256 * 1024  # 1024 entries of ~100 bytes, with room to spare
_FIELDS = ("delay_ms", "jitter_ms", "loss")


class LinkFileError(ValueError):
    """A link file that is not the format above, or breaks a bound; the message says where."""


@dataclass(frozen=True, slots=True)
class Link:
    """How this node's outgoing traffic to one peer is treated."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    @property
    def idle(self) -> bool:
        """Whether this link changes nothing (no delay, no jitter, no loss)."""
        return self.delay_ms == 0 and self.jitter_ms == 0 and self.loss == 0

    def draw(self, jitter_u: float, loss_u: float) -> float | None:
        """Seconds to hold one message, or None to drop it; `jitter_u` and `loss_u` are
        uniform draws in [0, 1) (a message is lost when `loss_u < loss`)."""
        if loss_u < self.loss:
            return None
        return (self.delay_ms + jitter_u * self.jitter_ms) / 1000


def _number(where: str, value: Any, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LinkFileError(f"{where}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or v > hi:
        raise LinkFileError(f"{where}: {value!r} is outside [0, {hi:g}]")
    return v


def _link(peer: str, spec: Any) -> Link:
    if not isinstance(spec, Mapping):
        raise LinkFileError(f"{peer}: expected an object, got {type(spec).__name__}")
    unknown = sorted(str(k) for k in spec if k not in _FIELDS)
    if unknown:
        raise LinkFileError(f"{peer}: unknown key {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    delay = _number(f"{peer}.delay_ms", spec.get("delay_ms", 0), MAX_DELAY_MS)
    jitter = _number(f"{peer}.jitter_ms", spec.get("jitter_ms", 0), MAX_DELAY_MS)
    if delay + jitter > MAX_DELAY_MS:
        raise LinkFileError(f"{peer}: delay_ms + jitter_ms = {delay + jitter:g} exceeds"
                            f" {MAX_DELAY_MS}")
    return Link(delay, jitter, _number(f"{peer}.loss", spec.get("loss", 0), 1.0))


def parse_links(text: str | bytes) -> dict[str, Link]:
    """The links a file's text names, by peer node id (idle ones left out); LinkFileError if
    it is malformed or breaks a bound. An empty (or all-blank) file means no links."""
    if len(text) > MAX_FILE_BYTES:
        raise LinkFileError(f"link file of {len(text)} bytes exceeds {MAX_FILE_BYTES}")
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise LinkFileError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise LinkFileError(f"expected an object of peers, got {type(doc).__name__}")
    if len(doc) > MAX_PEERS:
        raise LinkFileError(f"{len(doc)} peers exceed {MAX_PEERS}")
    out: dict[str, Link] = {}
    for peer, spec in doc.items():
        if not peer or len(peer) > MAX_PEER_ID:
            raise LinkFileError(f"peer id {peer[:40]!r}: expected 1 to {MAX_PEER_ID} characters")
        link = _link(peer, spec)
        if not link.idle:
            out[peer] = link
    return out
