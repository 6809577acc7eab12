"""Namespace quotas: overall per node and per API key (issue 14: ~3,200 namespaces OOM-killed a
node)."""

from __future__ import annotations

import pytest

from spine.core.errors import TooManyNamespaces
from spine.core.quota import NamespaceQuota


def test_node_limit_counts_stored_and_accepted_namespaces() -> None:
    stored = {"a", "b"}
    q = NamespaceQuota(3, stored.__contains__, lambda: len(stored))
    q.admit("a")  # existing namespaces always take writes
    q.admit("c")  # the third
    with pytest.raises(TooManyNamespaces):
        q.admit("d")
    q.admit("c")  # accepted before: still fine
    stored.add("c")  # the index now holds it: counted once, not twice
    with pytest.raises(TooManyNamespaces) as exc:
        q.admit("d")
    assert exc.value.code == "too_many_namespaces" and exc.value.field == "namespace"


def test_key_limit_counts_namespaces_the_key_created() -> None:
    stored: set[str] = {"shared"}
    q = NamespaceQuota(0, stored.__contains__, lambda: len(stored))
    q.admit("x1", "bot", 2)
    q.admit("x2", "bot", 2)
    q.admit("shared", "bot", 2)  # not created by it
    with pytest.raises(TooManyNamespaces, match="bot"):
        q.admit("x3", "bot", 2)
    q.admit("x3", "other", 2)  # another key has its own count
    q.admit("y", None, 0)  # no limits at all


def test_no_limits_admit_everything() -> None:
    q = NamespaceQuota(0, lambda ns: False, lambda: 0)
    for i in range(1000):
        q.admit(f"ns{i}", "k", 0)
