"""Property tests for placement over regions and zones (spine.core.ring, issue 17 item 1): with
`replication.n` a map region → N_r every preference list holds N_r distinct nodes of each region
(all of a smaller region's), spread over as many of that region's zones as it can, in ring
order, whatever the members' order; a join in one region leaves the others' replicas alone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.ring import Ring

SHARDS = 32

regions_st = st.sampled_from(["eu", "us", "ap"])
zones_st = st.sampled_from(["a", "b", "c"])


@st.composite
def topologies(draw: st.DrawFn) -> tuple[dict[str, tuple[str, str]], dict[str, int], int]:
    """(node → (region, zone), region → N_r with N_r <= the region's nodes, vnodes)."""
    count = draw(st.integers(1, 9))
    sites = {f"n{i}": (draw(regions_st), draw(zones_st)) for i in range(count)}
    sizes: dict[str, int] = {}
    for region, _ in sites.values():
        sizes[region] = sizes.get(region, 0) + 1
    chosen = draw(st.lists(st.sampled_from(sorted(sizes)), min_size=1, unique=True))
    n = {r: draw(st.integers(1, sizes[r])) for r in chosen}
    return sites, n, draw(st.integers(1, 12))


def ring_of(sites: dict[str, tuple[str, str]], n: int | dict[str, int], vnodes: int,
            order: list[str] | None = None) -> Ring:
    names = order or list(sites)
    # Zone names are per region here ("eu/a"), as a cloud's are.
    return Ring({m: f"{sites[m][0]}/{sites[m][1]}" for m in names}, shards=SHARDS,
                vnodes=vnodes, n=n, regions={m: sites[m][0] for m in reversed(names)})


@settings(max_examples=60, deadline=None)
@given(topologies())
def test_each_region_holds_its_n_r_replicas_over_as_many_zones_as_it_can(
    topo: tuple[dict[str, tuple[str, str]], dict[str, int], int],
) -> None:
    sites, n, vnodes = topo
    ring = ring_of(sites, n, vnodes)
    for s in range(SHARDS):
        pref = ring.preference_list(s)
        assert len(pref) == len(set(pref)) == sum(n.values()) == ring.n
        assert {sites[m][0] for m in pref} <= set(n)  # no replica outside the map's regions
        for region, want in n.items():
            local = ring.owners_in_region(pref, region)
            zones = {z for r, z in sites.values() if r == region}
            assert len(local) == want
            assert len({sites[m][1] for m in local}) == min(want, len(zones))
        order = ring.walk_order(s)
        assert [m for m in order if m in pref] == list(pref)


@settings(max_examples=40, deadline=None)
@given(topologies(), st.data())
def test_region_placement_is_a_function_of_the_member_set_only(
    topo: tuple[dict[str, tuple[str, str]], dict[str, int], int], data: st.DataObject,
) -> None:
    sites, n, vnodes = topo
    shuffled = data.draw(st.permutations(list(sites)))
    a, b = ring_of(sites, n, vnodes), ring_of(sites, n, vnodes, shuffled)
    for s in range(SHARDS):
        assert a.preference_list(s) == b.preference_list(s)


@settings(max_examples=40, deadline=None)
@given(topologies(), st.integers(1, 6))
def test_an_int_n_spans_as_many_regions_and_then_zones_as_it_can(
    topo: tuple[dict[str, tuple[str, str]], dict[str, int], int], n: int,
) -> None:
    sites, _, vnodes = topo
    ring = ring_of(sites, n, vnodes)
    regions = {r for r, _ in sites.values()}
    for s in range(SHARDS):
        pref = ring.preference_list(s)
        assert len(pref) == len(set(pref)) == min(n, len(sites))
        assert len({sites[m][0] for m in pref}) == min(n, len(regions))
        assert len({sites[m] for m in pref}) == min(n, len(set(sites.values())))


@settings(max_examples=40, deadline=None)
@given(topologies(), regions_st, zones_st)
def test_a_node_added_to_one_region_moves_no_other_regions_replicas(
    topo: tuple[dict[str, tuple[str, str]], dict[str, int], int], region: str, zone: str,
) -> None:
    sites, n, vnodes = topo
    before = ring_of(sites, n, vnodes)
    after = ring_of({**sites, "new": (region, zone)}, n, vnodes)
    for s in range(SHARDS):
        for other in set(n) - {region}:
            assert (before.owners_in_region(before.preference_list(s), other)
                    == after.owners_in_region(after.preference_list(s), other))
