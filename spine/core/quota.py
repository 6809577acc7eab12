"""Namespace quotas: how many namespaces a node accepts writes for, overall and per API key.

A namespace costs a node memory whatever it holds (an index entry, attributes, caches), so an
unbounded number of one-record namespaces can exhaust a node (issue 14: ~3,200 OOM-killed one).
The quota counts the namespaces this node *knows*: those its index holds and those it accepted
writes for through its own API. A write that would make a namespace known past `max_namespaces`,
or past its key's `max_namespaces` (namespaces that key made known on this node since start), is
refused. Both sets are bounded by their limits, so the quota itself cannot be grown without bound.
Pure: no I/O; the caller supplies what the index holds.
"""

from __future__ import annotations

from collections.abc import Callable

from spine.core.errors import TooManyNamespaces

__all__ = ["NamespaceQuota"]


class NamespaceQuota:
    """Admits writes to known namespaces and to new ones while the limits allow."""

    def __init__(
        self, max_namespaces: int, holds: Callable[[str], bool], held: Callable[[], int]
    ) -> None:
        self.max_namespaces = max_namespaces  # 0: no limit
        self._holds = holds  # whether this node's index holds a namespace
        self._held = held  # how many namespaces it holds
        self._accepted: set[str] = set()
        self._by_key: dict[str, set[str]] = {}

    def admit(self, namespace: str, key: str | None = None, key_limit: int = 0) -> None:
        """Return when a write to `namespace` (through API key `key`, which may make at most
        `key_limit` namespaces known; 0: no limit) is within quota, else TooManyNamespaces."""
        if not self.max_namespaces and not key_limit:
            return
        if namespace in self._accepted or self._holds(namespace):
            return
        # Accepted namespaces the index now holds are counted there: the set stays small.
        self._accepted = {ns for ns in self._accepted if not self._holds(ns)}
        known = self._held() + len(self._accepted)
        if self.max_namespaces and known >= self.max_namespaces:
            raise TooManyNamespaces(
                f"this node holds {known} namespaces and limits.max_namespaces is "
                f"{self.max_namespaces}: only existing namespaces take writes", field="namespace")
        if key is not None and key_limit:
            mine = self._by_key.setdefault(key, set())
            if len(mine) >= key_limit:
                raise TooManyNamespaces(
                    f"key {key!r} created {len(mine)} namespaces on this node and its"
                    f" max_namespaces is {key_limit}", field="namespace")
            mine.add(namespace)
        self._accepted.add(namespace)
