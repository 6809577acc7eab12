"""Region-local levels, the pure part (issue 17 item 2): a key's route within one region."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spine.core.routing import Route, localized

REGION = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b"}


def in_region(region: str) -> Callable[[Sequence[str]], tuple[str, ...]]:
    def keep(nodes: Sequence[str]) -> tuple[str, ...]:
        return tuple(n for n in nodes if REGION.get(n) == region)
    return keep


def alive(_node: str) -> bool:
    return True


def test_a_local_route_keeps_the_regions_owners_write_set_and_coordinators() -> None:
    rt = Route(7, ("b1", "a1", "a2", "b2"), ("b1", "a1", "a2", "b2", "a3"), 1,
               ("b1", "a1", "a2", "b2"))
    a = localized(rt, in_region("a"), "b1", alive)
    assert a is not None
    assert (a.shard, a.owners, a.write_to, a.extra) == (7, ("a1", "a2"), ("a1", "a2", "a3"), 1)
    assert a.coordinators[0] in ("a1", "a2") and set(a.coordinators) == {"a1", "a2"}
    assert a.forwards("b1")  # a node of region b hands a local write to region a's owner
    b = localized(rt, in_region("b"), "b1", alive)
    assert b is not None and b.owners == ("b1", "b2") and b.extra == 0
    assert not b.forwards("b1")


def test_a_region_without_an_owner_of_the_key_has_no_local_route() -> None:
    rt = Route(1, ("a1", "a2"), ("a1", "a2"), 0, ("a1", "a2"))
    assert localized(rt, in_region("b"), "b1", alive) is None


def test_without_regions_the_local_route_is_the_route() -> None:
    rt = Route(3, ("x", "y", "z"), ("x", "y", "z"), 0, ("x", "y", "z"))
    same = localized(rt, lambda nodes: tuple(nodes), "x", alive)
    assert same is not None
    assert (same.owners, same.write_to, same.extra) == (rt.owners, rt.write_to, rt.extra)
