"""Unit tests for spine.core.merkle: the per-shard hash tree and its descent (DESIGN §10)."""

from __future__ import annotations

import pytest

from spine.core.merkle import Descent, ShardTree, diff_trees, differing_children, digest

PAIRS = [(f"ns/k{i}".encode(), f"v{i}".encode()) for i in range(200)]


def test_digest_is_stable_and_unambiguous() -> None:
    assert digest(b"k", b"v") == digest(b"k", b"v")
    assert digest(b"ab", b"c") != digest(b"a", b"bc")


def test_empty_tree_has_zero_root_and_shape() -> None:
    tree = ShardTree()
    assert tree.root() == 0
    assert tree.shape == (16, 3)
    assert tree.leaves == 4096
    assert len(tree.level(3)) == 4096


def test_equal_sets_give_equal_roots() -> None:
    a = ShardTree.build(PAIRS)
    b = ShardTree()
    for key, version in reversed(PAIRS):
        b.add(key, version)
    assert a.root() == b.root() != 0
    assert a == b
    assert diff_trees(a, b) == []


def test_one_differing_version_is_found_in_its_leaf() -> None:
    a = ShardTree.build(PAIRS)
    b = ShardTree.build(PAIRS)
    key, old = PAIRS[17]
    b.replace(key, old, b"newer")
    assert a.root() != b.root()
    assert diff_trees(a, b) == [a.leaf_of(key)]
    assert diff_trees(b, a) == [a.leaf_of(key)]


def test_add_then_remove_returns_to_empty_root() -> None:
    tree = ShardTree()
    tree.add(b"k", b"v1")
    assert tree.root() != 0
    tree.remove(b"k", b"v1")
    assert tree.root() == 0
    assert tree == ShardTree()
    assert len(tree) == 0


def test_remove_from_empty_leaf_is_refused() -> None:
    with pytest.raises(ValueError, match="never added"):
        ShardTree().remove(b"k", b"v1")


def test_replace_equals_building_with_the_new_version() -> None:
    tree = ShardTree()
    tree.replace(b"k", None, b"v1")
    tree.replace(b"k", b"v1", b"v2")
    assert tree == ShardTree.build([(b"k", b"v2")])
    assert tree != ShardTree.build([(b"k", b"v1")])
    assert len(tree) == 1


def test_every_level_changes_along_the_updated_path() -> None:
    tree = ShardTree(fanout=4, depth=3)
    before = [tree.level(level) for level in range(4)]
    tree.add(b"k", b"v")
    leaf = tree.leaf_of(b"k")
    for level in range(3, -1, -1):
        index = leaf // 4 ** (3 - level)
        assert tree.node(level, index) != before[level][index]
        changed = [i for i, v in enumerate(tree.level(level)) if v != before[level][i]]
        assert changed == [index]


def test_children_and_differing_children() -> None:
    tree = ShardTree.build(PAIRS, fanout=4, depth=2)
    assert tree.children(0, 0) == tree.level(1)
    assert tree.children(1, 2) == tree.level(2)[8:12]
    assert differing_children(2, [1, 2, 3, 4], [1, 0, 3, 0]) == [9, 11]
    with pytest.raises(ValueError):
        tree.children(2, 0)  # leaves have no children
    with pytest.raises(ValueError):
        differing_children(0, [1], [1, 2])


def test_step_api_matches_diff_trees_in_depth_round_trips() -> None:
    a = ShardTree.build(PAIRS)
    b = ShardTree.build([*PAIRS[:-3], (b"extra", b"v")])
    descent = Descent(a, b.root())
    trips = 0
    request = descent.request()
    while not descent.done:
        level, parents = request
        request = descent.step(b.frontier_children(level, parents))  # what goes over the wire
        trips += 1
    assert trips == a.depth
    assert request[1] == []
    expected = sorted({a.leaf_of(k) for k, _ in PAIRS[-3:]} | {a.leaf_of(b"extra")})
    assert descent.differing_leaves == expected == diff_trees(a, b)


def test_descent_with_equal_roots_is_done_at_once() -> None:
    a = ShardTree.build(PAIRS)
    descent = Descent(a, a.root())
    assert descent.done
    assert descent.differing_leaves == []
    with pytest.raises(ValueError):
        descent.step([])


def test_descent_rejects_a_reply_of_the_wrong_length() -> None:
    descent = Descent(ShardTree.build(PAIRS), 12345)
    with pytest.raises(ValueError, match="expected 16 values"):
        descent.step([0] * 15)
    with pytest.raises(ValueError, match="not finished"):
        _ = descent.differing_leaves


def test_depth_zero_tree_is_a_single_leaf() -> None:
    a = ShardTree.build(PAIRS[:2], fanout=2, depth=0)
    assert diff_trees(a, ShardTree(fanout=2, depth=0)) == [0]
    assert diff_trees(a, ShardTree.build(PAIRS[:2], fanout=2, depth=0)) == []


def test_diff_trees_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        diff_trees(ShardTree(), ShardTree(fanout=8))


def test_serialisation_round_trip() -> None:
    tree = ShardTree.build(PAIRS, fanout=8, depth=2)
    copy = ShardTree.from_bytes(tree.to_bytes())
    assert copy == tree
    assert copy.root() == tree.root()
    assert copy.level(1) == tree.level(1)
    assert len(copy) == len(PAIRS)
    copy.remove(*PAIRS[0])  # the loaded tree keeps working
    assert copy == ShardTree.build(PAIRS[1:], fanout=8, depth=2)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x02\x10\x00\x03\x00", ShardTree().to_bytes()[:-1]],
    ids=["short", "version", "truncated"],
)
def test_from_bytes_rejects_malformed_blobs(blob: bytes) -> None:
    with pytest.raises(ValueError):
        ShardTree.from_bytes(blob)


def test_from_bytes_rejects_an_empty_leaf_with_a_digest() -> None:
    blob = bytearray(ShardTree(fanout=2, depth=1).to_bytes())
    blob[5] = 1  # first leaf's xor, count stays 0
    with pytest.raises(ValueError, match="non-zero digest"):
        ShardTree.from_bytes(bytes(blob))


def test_bad_shapes_are_refused() -> None:
    for fanout, depth in [(1, 3), (16, -1), (16, 9)]:
        with pytest.raises(ValueError):
            ShardTree(fanout, depth)
