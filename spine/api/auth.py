"""API keys: `Authorization: Bearer <key>`, stored as SHA-256 in cluster.yaml, with roles.

`agent` keys may touch only their listed namespaces, and read `/metrics` and the cluster views
only when `auth.agents_see_cluster` says so; `admin` keys may do anything, including cluster
operations. The scheme is matched case-insensitively (RFC 7235 §2.1). With no keys configured
auth is off, which the node allows only when every listener is on loopback (or when the operator
says `--insecure`).
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
    max_namespaces: int = 0  # namespaces this key may create on a node; 0: no per-key limit

    def can_use(self, namespace: str) -> bool:
        """Whether this caller may read and write `namespace`."""
        return self.role == "admin" or "*" in self.namespaces or namespace in self.namespaces


ANONYMOUS = Principal("anonymous", "admin", frozenset({"*"}))


class Authenticator:
    """Maps a bearer token to a Principal."""

    def __init__(self, keys: list[ApiKey], *, agents_see_cluster: bool = False) -> None:
        self.enabled = bool(keys)
        self.agents_see_cluster = agents_see_cluster
        self._keys = {
            k.sha256.lower(): Principal(k.name, k.role, frozenset(k.namespaces), k.max_namespaces)
            for k in keys
        }

    def authenticate(self, header: str | None) -> Principal:
        """The caller of a request, or Unauthorized."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("an API key is required: Authorization: Bearer <key>",
                               field="Authorization")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
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

    def require_cluster_view(self, p: Principal) -> None:
        """Forbidden unless `p` may read /metrics and the cluster views."""
        if p.role != "admin" and not self.agents_see_cluster:
            raise Forbidden(f"key {p.name!r} is an agent key: /metrics and the cluster views"
                            " need an admin key (or auth.agents_see_cluster: true)")

    @staticmethod
    def require_admin(p: Principal) -> None:
        """Forbidden unless `p` is an admin."""
        if p.role != "admin":
            raise Forbidden(f"key {p.name!r} is not an admin key")
