"""The cluster services see storage only through `spine.ports.RecordStore`, and the LMDB `Store`
implements it member for member (mypy checks the same where Node hands the store over; this
keeps the rule visible in the test run too)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from spine.ports import RecordStore
from spine.storage.lmdb_store import Store

CLUSTER = Path(__file__).resolve().parents[2] / "spine" / "cluster"


def _members(proto: type) -> list[str]:
    return sorted(n for n, v in vars(proto).items()
                  if not n.startswith("_") and (callable(v) or isinstance(v, property)))


def test_the_port_names_what_the_services_use() -> None:
    assert {"apply", "get", "get_many", "history", "list_namespace", "scan_shard", "hints_for",
            "add_hints", "delete_hints", "meta_get", "meta_put", "purge", "seq"} <= set(
        _members(RecordStore))


@pytest.mark.parametrize("name", _members(RecordStore))
def test_the_lmdb_store_implements_each_member_alike(name: str) -> None:
    port, impl = inspect.getattr_static(RecordStore, name), inspect.getattr_static(Store, name)
    if isinstance(port, property):
        assert isinstance(impl, property)
        return
    assert inspect.iscoroutinefunction(port) == inspect.iscoroutinefunction(impl), name
    want, got = inspect.signature(port), inspect.signature(impl)
    assert [(p.name, p.kind, p.default) for p in want.parameters.values()] == [
        (p.name, p.kind, p.default) for p in got.parameters.values()], name


def test_no_cluster_module_imports_the_concrete_store() -> None:
    offenders = []
    for path in sorted(CLUSTER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spine.storage"):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name == "Store"]
    assert offenders == []
