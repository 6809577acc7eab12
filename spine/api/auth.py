"""API keys: `Authorization: Bearer <key>`, stored as SHA-256 in cluster.yaml, with roles.

`agent` keys may touch only their listed namespaces; `admin` keys may do anything, including
cluster operations. With no keys configured auth is off, which the node allows only when every
listener is on loopback (or when the operator says `--insecure`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from spine.core.config import ApiKey
from spine.core.errors import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name, its role and its namespaces."""

    name: str
    role: str
    namespaces: frozenset[str]

    def can_use(self, namespace: str) -> bool:
        """Whether this caller may read and write `namespace`."""
        return self.role == "admin" or "*" in self.namespaces or namespace in self.namespaces


ANONYMOUS = Principal("anonymous", "admin", frozenset({"*"}))


class Authenticator:
    """Maps a bearer token to a Principal."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.enabled = bool(keys)
        self._keys = {
            k.sha256.lower(): Principal(k.name, k.role, frozenset(k.namespaces)) for k in keys
        }

    def authenticate(self, header: str | None) -> Principal:
        """The caller of a request, or Unauthorized."""
        if not self.enabled:
            return ANONYMOUS
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("an API key is required: Authorization: Bearer <key>",
                               field="Authorization")
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        for stored, principal in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return principal
        raise Unauthorized("unknown API key", field="Authorization")

    @staticmethod
    def require_namespace(p: Principal, namespace: str) -> None:
        """Forbidden unless `p` may use `namespace`."""
        if not p.can_use(namespace):
            raise Forbidden(f"key {p.name!r} may not use namespace {namespace!r}",
                            field="namespace")

    @staticmethod
    def require_admin(p: Principal) -> None:
        """Forbidden unless `p` is an admin."""
        if p.role != "admin":
            raise Forbidden(f"key {p.name!r} is not an admin key")
