"""Unit tests for spine.core.validation: names, write bodies and DESIGN §1's limits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core import validation as v
from spine.core.errors import InvalidInput, SpineError, TooLarge
from spine.core.validation import Limits, normalise, write_body

LIM = Limits()
DIM = 4
VEC = [0.1, 0.2, 0.3, 0.4]


def err(exc: type[SpineError], fn: Any, *args: Any) -> SpineError:
    with pytest.raises(exc) as info:
        fn(*args)
    return info.value


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", ["a", "0", "ns", "my_ns-1", "a" * 64, "9-_"])
def test_valid_namespaces(ns: str) -> None:
    assert v.namespace(ns) == ns


@pytest.mark.parametrize(
    "ns",
    [
        "", "A", "Ns", "-a", "_a", "a" * 65, "a.b", "a/b", "a b", "naïve", "名前", "a\n",
        "ａ",  # fullwidth a
        None, 3,
    ],
)
def test_invalid_namespaces(ns: object) -> None:
    assert err(InvalidInput, v.namespace, ns).field == "namespace"


@pytest.mark.parametrize(
    "mid", ["a", "A", "0", "Z.z:9-_", "0190c0de-7b1e-7000-8000-000000000000", "x" * 128]
)
def test_valid_ids(mid: str) -> None:
    assert v.memory_id(mid) == mid


@pytest.mark.parametrize(
    "mid", ["", "-a", ".a", ":a", "_a", "x" * 129, "a/b", "a b", "é", "a\n", "a\x00", None, 1]
)
def test_invalid_ids(mid: object) -> None:
    assert err(InvalidInput, v.memory_id, mid).field == "id"


@pytest.mark.parametrize("t", ["a", "0", "a:b", "a.b", "a_b", "a-b", "k8s:ns.x_y-z", "t" * 64])
def test_valid_tags(t: str) -> None:
    assert v.tag(t, "tags[0]") == t


@pytest.mark.parametrize("t", ["", "A", "-a", ":a", ".a", "t" * 65, "a b", "a/b", "ü", "a@b", 1])
def test_invalid_tags(t: object) -> None:
    assert err(InvalidInput, v.tag, t, "tags[2]").field == "tags[2]"


@pytest.mark.parametrize("a", ["a", "Agent-7", "bot@example.com", "svc:writer.1_x", "a" * 128])
def test_valid_agents(a: str) -> None:
    assert v.agent_id(a) == a


@pytest.mark.parametrize("a", ["", "-a", "@a", "a" * 129, "a b", "agént", "a/b", 7, None])
def test_invalid_agents(a: object) -> None:
    assert err(InvalidInput, v.agent_id, a).field == "agent_id"


# --- write bodies -------------------------------------------------------------------------------


def test_minimal_body_gets_defaults() -> None:
    body = write_body({"content": "hi"}, LIM, DIM)
    assert body.content == "hi"
    assert body.tags == ()
    assert body.metadata == {}
    assert body.agent_id is None
    assert body.vector is None


def test_full_body() -> None:
    body = write_body(
        {"content": "", "tags": ["b", "a", "b"], "metadata": {"k": [1, None]},
         "agent_id": "bot-1", "vector": [1, 0, 0, 0.5]},
        LIM, DIM,
    )
    assert body.content == ""
    assert body.tags == ("a", "b")  # sorted and de-duplicated
    assert body.metadata == {"k": [1, None]}
    assert body.agent_id == "bot-1"
    assert body.vector == [1.0, 0.0, 0.0, 0.5]
    assert all(type(x) is float for x in body.vector)


@pytest.mark.parametrize("bad", [None, [], "content", 3])
def test_body_must_be_an_object(bad: object) -> None:
    assert err(InvalidInput, write_body, bad, LIM, DIM).field == "body"
    assert err(InvalidInput, write_body, bad, LIM, DIM, "items[2].").field == "items[2]"


def test_unknown_field_is_named() -> None:
    e = err(InvalidInput, write_body, {"content": "x", "tagz": []}, LIM, DIM)
    assert e.field == "tagz"
    assert "tagz" in e.message
    assert err(InvalidInput, write_body, {"content": "x", "id": "a"}, LIM, DIM).field == "id"


@pytest.mark.parametrize("body", [{}, {"tags": []}, {"content": None}])
def test_content_is_required(body: dict[str, Any]) -> None:
    assert err(InvalidInput, write_body, body, LIM, DIM).field == "content"


@pytest.mark.parametrize("content", [1, 1.5, True, ["x"], {"t": "x"}, b"bytes"])
def test_content_must_be_a_string(content: object) -> None:
    assert err(InvalidInput, write_body, {"content": content}, LIM, DIM).field == "content"


def test_content_limit_counts_utf8_bytes() -> None:
    lim = Limits(content_bytes=8)
    assert write_body({"content": "a" * 8}, lim, DIM).content == "a" * 8
    assert write_body({"content": "éééé"}, lim, DIM).content == "éééé"  # 8 bytes
    e = err(TooLarge, write_body, {"content": "ééééa"}, lim, DIM)  # 9 bytes, 5 chars
    assert e.field == "content"
    assert e.code == "too_large"
    e = err(TooLarge, write_body, {"content": "a" * (LIM.content_bytes + 1)}, LIM, DIM)
    assert e.field == "content"


@pytest.mark.parametrize("content", ["\ud800", "ok\udfffok", "\udc80"])
def test_lone_surrogates_are_not_utf8(content: str) -> None:
    e = err(InvalidInput, write_body, {"content": content}, LIM, DIM)
    assert e.field == "content"
    assert not isinstance(e, TooLarge)


@pytest.mark.parametrize("tags", ["a", {"a": 1}, None, 3, ("a",)])
def test_tags_must_be_a_list(tags: object) -> None:
    assert err(InvalidInput, write_body, {"content": "x", "tags": tags}, LIM, DIM).field == "tags"


def test_too_many_tags_is_too_large() -> None:
    ok = [f"t{i}" for i in range(LIM.max_tags)]
    assert len(write_body({"content": "x", "tags": ok}, LIM, DIM).tags) == LIM.max_tags
    e = err(TooLarge, write_body, {"content": "x", "tags": [*ok, "one-more"]}, LIM, DIM)
    assert e.field == "tags"


def test_an_invalid_tag_is_named_by_index() -> None:
    e = err(InvalidInput, write_body, {"content": "x", "tags": ["ok", "fine", "Bad"]}, LIM, DIM)
    assert e.field == "tags[2]"
    e = err(InvalidInput, write_body, {"content": "x", "tags": ["ok", 5]}, LIM, DIM)
    assert e.field == "tags[1]"


@pytest.mark.parametrize("meta", [[], "x", 1, None, [["k", "v"]]])
def test_metadata_must_be_an_object(meta: object) -> None:
    e = err(InvalidInput, write_body, {"content": "x", "metadata": meta}, LIM, DIM)
    assert e.field == "metadata"


def test_metadata_limit_counts_encoded_json() -> None:
    lim = Limits(metadata_bytes=20)
    assert write_body({"content": "x", "metadata": {"k": "a" * 12}}, lim, DIM).metadata  # 18 B
    e = err(TooLarge, write_body, {"content": "x", "metadata": {"k": "a" * 20}}, lim, DIM)
    assert e.field == "metadata"


def test_metadata_that_is_not_json_is_invalid() -> None:
    e = err(InvalidInput, write_body, {"content": "x", "metadata": {"k": {1, 2}}}, LIM, DIM)
    assert e.field == "metadata"


def test_agent_id_is_validated_when_present() -> None:
    assert write_body({"content": "x", "agent_id": None}, LIM, DIM).agent_id is None
    e = err(InvalidInput, write_body, {"content": "x", "agent_id": "bad agent"}, LIM, DIM)
    assert e.field == "agent_id"


# --- vectors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vec",
    [
        [0.1, 0.2, 0.3],  # wrong dimension
        [0.1, 0.2, 0.3, 0.4, 0.5],
        [],
        [math.nan, 1, 1, 1],
        [math.inf, 1, 1, 1],
        [1, -math.inf, 1, 1],
        [1e39, 1, 1, 1],  # past float32's range
        ["0.1", 0.2, 0.3, 0.4],
        [True, 0.2, 0.3, 0.4],
        [False, 1.0, 1.0, 1.0],
        [None, 1.0, 1.0, 1.0],
        [[1.0], 1.0, 1.0, 1.0],
        [0, 0, 0, 0],
        [0.0, -0.0, 0.0, 0.0],
        "1,2,3,4",
        {"0": 1},
    ],
)
def test_bad_vectors_are_invalid(vec: object) -> None:
    e = err(InvalidInput, write_body, {"content": "x", "vector": vec}, LIM, DIM)
    assert e.field == "vector"


def test_integer_vectors_are_accepted_as_floats() -> None:
    assert v.vector([1, 2, 3, -4], DIM) == [1.0, 2.0, 3.0, -4.0]


def test_a_huge_integer_is_invalid_not_a_crash() -> None:
    assert err(InvalidInput, v.vector, [10**400, 1, 1, 1], DIM).field == "vector"


def test_a_vector_that_is_all_zeros_in_float32_is_invalid() -> None:
    assert err(InvalidInput, v.vector, [1e-50] * DIM, DIM).field == "vector"


@pytest.mark.parametrize(
    "raw", [[1e20, 0.0, 0.0, 0.0], [3e38, 3e38, 3e38, 3e38], [1e-30, 1e-30, 0.0, 0.0]]
)
def test_extreme_accepted_vectors_normalise_to_unit_vectors(raw: list[float]) -> None:
    vec = v.vector(raw, DIM)  # accepted: finite and within float32's range
    with np.errstate(all="ignore"):
        unit = np.frombuffer(normalise(vec), dtype=np.float32)
    assert np.all(np.isfinite(unit))
    assert abs(float(np.linalg.norm(unit.astype(np.float64))) - 1.0) < 1e-3


@settings(deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: abs(x) > 1e-6),
                min_size=DIM, max_size=DIM))
def test_ordinary_accepted_vectors_normalise_to_unit_vectors(raw: list[float]) -> None:
    unit = np.frombuffer(normalise(v.vector(raw, DIM)), dtype=np.float32)
    assert np.all(np.isfinite(unit))
    assert abs(float(np.linalg.norm(unit.astype(np.float64))) - 1.0) < 1e-4


# --- batch prefixes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": 1}, "items[3].content"),
        ({"content": "a" * (LIM.content_bytes + 1)}, "items[3].content"),
        ({"content": "x", "nope": 1}, "items[3].nope"),
        ({"content": "x", "tags": ["ok", "BAD"]}, "items[3].tags[1]"),
        ({"content": "x", "tags": "a"}, "items[3].tags"),
        ({"content": "x", "metadata": []}, "items[3].metadata"),
        ({"content": "x", "vector": [0, 0, 0, 0]}, "items[3].vector"),
        ({"content": "x", "agent_id": "-"}, "items[3].agent_id"),
    ],
)
def test_batch_items_are_named_with_their_prefix(body: dict[str, Any], field: str) -> None:
    with pytest.raises((InvalidInput, TooLarge)) as info:
        write_body(body, LIM, DIM, prefix="items[3].")
    assert info.value.field == field
