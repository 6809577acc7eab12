"""Unit tests for regions and zones: placement per region (`replication.n` as a map region → N,
Cassandra's NetworkTopologyStrategy), the ring map's region field, the loader's checks and the
status columns (issue 17 item 1)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from spine.admin import format_status
from spine.core.config import from_dict, load
from spine.core.consistency import Level
from spine.core.errors import ConfigError
from spine.core.ring import Ring, owners_in_region, place, shortfall, total_replicas
from spine.core.ringmap import ACTIVE, JOINING, MAX_SITE, Entry, Placement, RingMap, genesis

Q, VNODES = 128, 32

# Three regions of unequal size, each over two or three zones.
TOPOLOGY = {
    "eu1": ("eu", "eu-a"), "eu2": ("eu", "eu-a"), "eu3": ("eu", "eu-b"), "eu4": ("eu", "eu-c"),
    "us1": ("us", "us-a"), "us2": ("us", "us-b"), "us3": ("us", "us-b"),
    "ap1": ("ap", "ap-a"), "ap2": ("ap", "ap-b"),
}
ZONES = {m: z for m, (_, z) in TOPOLOGY.items()}
REGIONS = {m: r for m, (r, _) in TOPOLOGY.items()}
PER_REGION = {"eu": 3, "us": 2, "ap": 1}


def region_ring(n: int | dict[str, int] = PER_REGION, members: dict[str, str] = ZONES,
                regions: dict[str, str] = REGIONS) -> Ring:
    return Ring(members, shards=Q, vnodes=VNODES, n=n, regions=regions)


# ------------------------------------------------------------------ place(): the rule, by hand

def test_place_takes_n_r_per_region_distinct_zones_first_in_ring_order() -> None:
    order = ["eu1", "us2", "eu2", "ap1", "us3", "eu3", "us1", "eu4", "ap2"]
    pref = place(order, ZONES, REGIONS, {"eu": 2, "us": 2})
    # eu: eu1 (eu-a), then eu2 shares eu-a, so eu3 (eu-b); us: us2 (us-b), us3 shares us-b, us1.
    # ap has no entry: no replica there. The list keeps ring order.
    assert pref == ("eu1", "us2", "eu3", "us1")


def test_place_with_a_region_short_of_nodes_takes_all_it_has() -> None:
    order = ["ap1", "eu1", "ap2"]
    assert place(order, ZONES, REGIONS, {"ap": 3, "eu": 1}) == ("ap1", "eu1", "ap2")


def test_place_with_an_int_spreads_over_regions_then_zones() -> None:
    order = ["eu1", "eu2", "eu3", "us2", "us3", "ap1"]
    # Regions first (eu1, us2, ap1), then a new zone (eu3: eu-b), then ring order.
    assert place(order, ZONES, REGIONS, 4) == ("eu1", "us2", "ap1", "eu3")
    assert place(order, ZONES, REGIONS, 5) == ("eu1", "us2", "ap1", "eu3", "eu2")


def test_place_without_regions_is_the_zone_rule() -> None:
    zones = {"a1": "za", "a2": "za", "b1": "zb", "c1": "zc"}
    assert place(["a1", "a2", "b1", "c1"], zones, {}, 3) == ("a1", "b1", "c1")
    assert place(["a1", "a2", "b1"], zones, {}, 3) == ("a1", "b1", "a2")
    assert place(["a1", "a2", "b1"], {}, {}, 2) == ("a1", "a2")


def test_total_replicas() -> None:
    assert total_replicas(3) == 3
    assert total_replicas(PER_REGION) == 6


# ------------------------------------------------------------------ Ring with regions

def test_each_region_holds_exactly_its_n_r_distinct_nodes_over_distinct_zones() -> None:
    ring = region_ring()
    assert ring.n == 6 and ring.replicas == PER_REGION
    zones_in = {r: {z for m, (rr, z) in TOPOLOGY.items() if rr == r} for r in PER_REGION}
    for s in range(Q):
        pref = ring.preference_list(s)
        assert len(pref) == len(set(pref)) == 6
        for region, want in PER_REGION.items():
            local = ring.owners_in_region(pref, region)
            assert len(local) == want
            assert len({ZONES[m] for m in local}) == min(want, len(zones_in[region]))
        order = ring.walk_order(s)
        assert [m for m in order if m in pref] == list(pref)  # ring order


def test_every_node_of_a_region_shares_its_load() -> None:
    ring = region_ring({"eu": 2, "us": 1, "ap": 1})
    for m in ("eu1", "eu2", "eu3", "eu4", "us1", "us2", "us3", "ap1", "ap2"):
        assert ring.shards_of(m), m


def test_region_placement_is_independent_of_member_insertion_order() -> None:
    items = list(TOPOLOGY.items())[:6]
    rings = [
        Ring({m: z for m, (_, z) in perm}, shards=32, vnodes=8, n={"eu": 2, "us": 1},
             regions={m: r for m, (r, _) in reversed(perm)})
        for perm in itertools.islice(itertools.permutations(items), 0, 720, 97)
    ]
    for ring in rings[1:]:
        assert [ring.preference_list(s) for s in range(32)] == [
            rings[0].preference_list(s) for s in range(32)]


def test_nodes_of_a_region_outside_the_map_hold_nothing() -> None:
    ring = region_ring({"eu": 2, "us": 1})
    assert ring.shards_of("ap1") == [] and ring.shards_of("ap2") == []
    assert ring.region_of("ap1") == "ap" and ring.region_of("nobody") == ""


def test_without_regions_placement_is_exactly_as_before() -> None:
    zones = {f"n{i}": f"z{i % 3}" for i in range(7)}
    before = Ring(zones, shards=Q, vnodes=VNODES, n=3)
    blank = Ring(zones, shards=Q, vnodes=VNODES, n=3, regions=dict.fromkeys(zones, ""))
    for s in range(Q):
        assert before.preference_list(s) == blank.preference_list(s)
    assert blank.regions == {} and blank.replicas == 3


def test_an_int_n_with_regions_spans_as_many_regions_as_it_can() -> None:
    ring = region_ring(3)
    for s in range(Q):
        pref = ring.preference_list(s)
        assert {REGIONS[m] for m in pref} == {"eu", "us", "ap"}


def test_owners_in_region_keeps_the_lists_order() -> None:
    owners = ("us1", "eu2", "eu1", "ap1")
    assert owners_in_region(owners, "eu", REGIONS) == ("eu2", "eu1")
    assert owners_in_region(owners, "", REGIONS) == ()
    assert owners_in_region(owners, "", {}) == owners


def test_shortfall_counts_nodes_per_region_for_a_map() -> None:
    assert shortfall(["", "", ""], 3) is None
    assert shortfall(["", ""], 3) == "2 nodes for replication.n=3"
    assert shortfall(["eu", "eu", "us"], {"eu": 2, "us": 1}) is None
    assert shortfall(["eu", "us", "us", "us"], {"eu": 2, "us": 1}) == (
        "1 nodes in region 'eu' for replication.n.eu=2")


# ------------------------------------------------------------------ ring map and placement

def topo_map() -> RingMap:
    return genesis({"id": m, "zone": z, "region": r} for m, (r, z) in TOPOLOGY.items())


def test_genesis_carries_regions_and_placement_places_by_them() -> None:
    m = topo_map()
    assert m.entries["us2"].region == "us" and m.entries["us2"].zone == "us-b"
    p = Placement(m, shards=Q, vnodes=VNODES, n=PER_REGION)
    assert p.region_of("ap2") == "ap" and p.region_of("missing") == ""
    for s in range(Q):
        for region, want in PER_REGION.items():
            assert len(p.owners_in_region(p.owners(s), region)) == want


def test_a_node_joining_one_region_moves_no_other_regions_replicas() -> None:
    m = topo_map().merge([Entry("eu5", JOINING, 1, "eu-b", region="eu")])
    p = Placement(m, shards=Q, vnodes=VNODES, n=PER_REGION)
    assert p.moves(), "the new eu node takes some shards"
    for s in range(Q):
        assert set(p.pending(s)) <= {"eu5"}
        for region in ("us", "ap"):
            assert (p.owners_in_region(p.owners(s), region)
                    == p.owners_in_region(p.future_owners(s), region))
        assert len(p.owners_in_region(p.future_owners(s), "eu")) == 3


def test_an_entry_without_a_region_keeps_the_nine_field_wire_form_and_digest() -> None:
    e = Entry("n1", ACTIVE, 5, "z", "h", 1, 2, 3)
    assert len(e.to_wire()) == 9
    assert Entry.from_wire(e.to_wire()) == e
    old_map = RingMap([e])
    assert RingMap.from_wire(old_map.to_wire()).digest() == old_map.digest()


@pytest.mark.parametrize("wire", [
    ["n1", ACTIVE, 5, "z", "h", 1, 2, 3],  # stored before `removed`
    ["n1", ACTIVE, 5, "z", "h", 1, 2, 3, False],  # stored before regions
])
def test_old_entries_decode_with_no_region(wire: list[Any]) -> None:
    e = Entry.from_wire(wire)
    assert e.region == "" and e.zone == "z" and not e.removed


def test_an_entry_with_a_region_round_trips_in_ten_fields() -> None:
    e = Entry("n1", ACTIVE, 5, "eu-a", "h", 1, 2, 3, True, "eu")
    w = e.to_wire()
    assert len(w) == 10 and w[9] == "eu"
    assert Entry.from_wire(w) == e


@pytest.mark.parametrize("wire", [
    ["n1", ACTIVE, 5, "z", "h", 1, 2, 3, False, 7],
    ["n1", ACTIVE, 5, "z", "h", 1, 2, 3, False, "r" * (MAX_SITE + 1)],
    ["n1", ACTIVE, 5, "z" * (MAX_SITE + 1), "h", 1, 2, 3, False],
    ["n1", ACTIVE, 5, None, "h", 1, 2, 3, False],
    ["n1", ACTIVE, 5, "z", "h", 1, 2, 3, False, "eu", "extra"],
])
def test_bad_zones_and_regions_on_the_wire_are_refused(wire: list[Any]) -> None:
    with pytest.raises(ValueError):
        Entry.from_wire(wire)


def test_maps_disagreeing_on_a_region_at_one_version_converge() -> None:
    a = Entry("n1", ACTIVE, 5, "z", region="eu")
    b = Entry("n1", ACTIVE, 5, "z", region="us")
    assert RingMap([a]).merge([b]) == RingMap([b]).merge([a])


# ------------------------------------------------------------------ config

def nodes_yaml() -> list[dict[str, str]]:
    return [{"id": m, "zone": z, "region": r} for m, (r, z) in TOPOLOGY.items()]


def config_error(replication_n: object, nodes: list[dict[str, str]] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict({"nodes": nodes_yaml() if nodes is None else nodes,
                   "replication": {"n": replication_n}})
    return info.value


def test_a_region_map_loads_with_n_the_total() -> None:
    cfg = from_dict({"nodes": nodes_yaml(), "replication": {"n": PER_REGION}})
    assert cfg.replication.n == 6 and cfg.replication.regions == PER_REGION
    assert cfg.replication.replicas == PER_REGION
    assert cfg.node("us2").region == "us"
    assert cfg.policy().n == 6 and cfg.policy().quorum(Level.STRONG).w == 4
    plain = from_dict({"replication": {"n": 2}})
    assert plain.replication.replicas == 2 and plain.replication.regions == {}


def test_a_region_map_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes_yaml(), "replication": {"n": {"eu": 2}},
                                    }).replace("region: us", "region: eu")
                    .replace("region: ap", "region: eu"))
    assert load(path).replication.regions == {"eu": 2}
    env = {"SPINE_REPLICATION__N": "{eu: 1}"}
    assert load(path, env=env).replication.regions == {"eu": 1}


@pytest.mark.parametrize(("value", "key", "words"), [
    ({"eu": 3, "mars": 1, "us": 2, "ap": 1}, "replication.n.mars", "no node's region"),
    ({"eu": 3, "us-b": 1, "us": 2, "ap": 1}, "replication.n.us-b", "a zone, not a region"),
    ({"eu": 3, "us": 4, "ap": 1}, "replication.n.us", "region 'us' has 3 nodes"),
    ({"eu": 3, "us": 2, "ap": 0}, "replication.n.ap", ">= 1"),
    ({"eu": 3, "us": "two", "ap": 1}, "replication.n.us", ">= 1"),
    ({"eu": 3, "us": True, "ap": 1}, "replication.n.us", ">= 1"),
    ({"eu west": 1}, "replication.n.eu west", "not a region name"),
    ({}, "replication.n", "at least one region"),
    ("3", "replication.n", "integer"),
    ([1, 2], "replication.n", "integer"),
    (0, "replication.n", ">= 1"),
])
def test_bad_region_maps_name_the_key(value: object, key: str, words: str) -> None:
    e = config_error(value)
    assert e.field == key and e.message.startswith(f"{key}:") and words in e.message, e.message


def test_a_node_in_a_region_the_map_leaves_out_is_named() -> None:
    e = config_error({"eu": 3, "us": 2})
    assert e.field == "nodes[7].region" and "'ap'" in e.message
    no_region = [{"id": "x1"}, {"id": "x2", "region": "eu"}]
    e = config_error({"eu": 1}, no_region)
    assert e.field == "nodes[0].region" and "none" in e.message


def test_a_map_when_no_node_has_a_region_says_so() -> None:
    e = config_error({"eu": 1}, [{"id": "x1", "zone": "eu"}])
    assert e.field == "replication.n.eu" and "no node has a region" in e.message


@pytest.mark.parametrize(("part", "name"), [
    ("region", "eu west"), ("region", "-eu"), ("zone", "a/b"), ("zone", "z" * 65),
])
def test_bad_zone_and_region_names_are_named(part: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"nodes": [{"id": "n1"}, {"id": "n2", part: name}]})
    assert info.value.field == f"nodes[1].{part}"


def test_regions_without_a_map_need_no_map() -> None:
    cfg = from_dict({"nodes": nodes_yaml(), "replication": {"n": 3}})
    assert cfg.replication.replicas == 3


def test_replication_regions_is_not_a_yaml_key() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"replication": {"regions": {"eu": 1}}})
    assert info.value.field == "replication.regions"


# ------------------------------------------------------------------ status

def test_status_shows_region_and_zone_columns() -> None:
    cluster = {"cluster": "c", "node": "eu1", "members": [
        {"id": "eu1", "address": "h:1", "zone": "eu-a", "region": "eu-west",
         "state": "active", "alive": True},
        {"id": "n2", "address": "h:2", "zone": "", "state": "active", "alive": True},
    ]}
    shards = {"ring": {"digest": "d"}, "shards": [{"shard": 0, "preference_list": ["eu1"],
                                                   "pending": []}]}
    lines = format_status(cluster, shards, {}).splitlines()
    assert lines[2].split()[-2:] == ["region", "zone"]
    assert lines[3].split()[-2:] == ["eu-west", "eu-a"]
    assert lines[4].split()[-2:] == ["-", "-"]
