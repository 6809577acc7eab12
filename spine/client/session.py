"""Session tokens on the client side: merged (never replaced) and persisted per cluster.

A reply's token is the request's token plus what that request wrote or read, so two requests
in flight through one client each return a token missing the other's key; replacing the
client's token with the last reply would silently drop read-your-writes for the other key.
The client merges every reply's token into its own with the server's own SessionToken.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from spine.core.errors import InvalidInput
from spine.core.session import HEADER, WRITE_SEQ_HEADER, SessionToken

__all__ = ["HEADER", "WRITE_SEQ_HEADER", "TokenStore", "merge_tokens"]

# The client keeps up to this many keys (the header's byte bound usually bites first); a node
# keeps its own session.max_keys of them and marks the token overflowed, so reads of the keys it
# dropped go to a quorum: the guarantee holds whatever the two bounds are.
CLIENT_MAX_KEYS = 1024


def _decode(text: str) -> SessionToken | None:
    try:
        return SessionToken.decode(text, CLIENT_MAX_KEYS)
    except InvalidInput:
        return None


def merge_tokens(mine: str | None, theirs: str | None) -> str | None:
    """The token that holds, per key, the newer version of the two (overflowed if either is),
    less the entries the reply dropped as settled (held by every owner); a malformed reply token
    is ignored, a malformed own token is replaced."""
    if not theirs:
        return mine
    b = _decode(theirs)
    if b is None:
        return mine
    a = _decode(mine) if mine else None
    if a is None:
        b.forgotten.clear()
        return b.encode()
    a.merge(b)
    a.forgotten.clear()  # what a reply dropped is news for this merge only
    return a.encode()


def token_keys(text: str | None) -> set[str]:
    """The keys (`namespace/id`) a token holds versions for (empty if none or malformed)."""
    tok = _decode(text) if text else None
    return set(tok.entries) if tok else set()


class TokenStore:
    """Session tokens kept in one JSON file, one per cluster, so a token never reaches another
    cluster (whose nodes would answer session_unavailable for versions they never had)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent, unreadable, or an old single-token file of unknown cluster
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def load(self, cluster: str) -> str | None:
        """The token saved for `cluster`, if any."""
        return self._read().get(cluster)

    def save(self, cluster: str, token: str | None) -> None:
        """Keep `token` for `cluster` (merged with the one saved, so two shells both keep
        theirs); written to a private temporary file and renamed over the old one."""
        if not token:
            return
        data = self._read()
        merged = merge_tokens(data.get(cluster), token)
        if merged is None or data.get(cluster) == merged:
            return
        data[cluster] = merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
