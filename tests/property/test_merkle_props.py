"""Property tests for spine.core.merkle: order independence, exact diffs, build == adds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spine.core.merkle import ShardTree, diff_trees

FANOUT, DEPTH = 4, 2  # 16 leaves, so random keys share buckets often

keys = st.binary(min_size=1, max_size=8)
versions = st.binary(min_size=1, max_size=4)
# One version per key, as a replica holds: a (key, version) pair appears at most once.
replicas = st.dictionaries(keys, versions, max_size=40)


def tree_of(pairs: list[tuple[bytes, bytes]]) -> ShardTree:
    tree = ShardTree(FANOUT, DEPTH)
    for key, version in pairs:
        tree.add(key, version)
    return tree


@given(replicas, st.data())
def test_root_is_independent_of_insertion_order(
    replica: dict[bytes, bytes], data: st.DataObject
) -> None:
    pairs = list(replica.items())
    shuffled = data.draw(st.permutations(pairs))
    assert tree_of(pairs).root() == tree_of(shuffled).root()
    assert tree_of(pairs) == tree_of(shuffled)


@given(replicas, replicas)
def test_diff_trees_is_exactly_the_leaves_whose_pairs_differ(
    a: dict[bytes, bytes], b: dict[bytes, bytes]
) -> None:
    ta, tb = tree_of(list(a.items())), tree_of(list(b.items()))
    buckets: dict[int, tuple[set[tuple[bytes, bytes]], set[tuple[bytes, bytes]]]] = {}
    for side, replica in enumerate((a, b)):
        for pair in replica.items():
            buckets.setdefault(ta.leaf_of(pair[0]), (set(), set()))[side].add(pair)
    expected = sorted(leaf for leaf, (mine, theirs) in buckets.items() if mine != theirs)
    assert diff_trees(ta, tb) == expected
    assert diff_trees(tb, ta) == expected
    assert (ta.root() == tb.root()) == (a == b)


@given(replicas, replicas)
def test_replacing_versions_converges_to_the_other_replica(
    a: dict[bytes, bytes], b: dict[bytes, bytes]
) -> None:
    tree = tree_of(list(a.items()))
    for key, version in b.items():
        tree.replace(key, a.get(key), version)
    for key in a.keys() - b.keys():
        tree.remove(key, a[key])
    assert tree == tree_of(list(b.items()))


@given(replicas)
def test_build_equals_incremental_adds_and_round_trips(replica: dict[bytes, bytes]) -> None:
    pairs = list(replica.items())
    built = ShardTree.build(pairs, fanout=FANOUT, depth=DEPTH)
    assert built == tree_of(pairs)
    assert built.level(1) == tree_of(pairs).level(1)
    assert ShardTree.from_bytes(built.to_bytes()) == built
