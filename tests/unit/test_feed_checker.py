"""The feed checker (jepsen_style/checker/feed.py) on hand-made histories: each anomaly on its own
small history must make it invalid, and a clean history with duplicates, superseded versions and
writes of unknown outcome must pass."""

from __future__ import annotations

import itertools
from typing import Any

from jepsen_style.checker.feed import check_feed, parse_version

CONSUMER = 5000


def ver(hlc: int, node: str = "n1") -> str:
    return f"{hlc:016x}.{node}"


def live(key: str, version: str, content: str) -> dict[str, Any]:
    return {"id": key, "version": version, "deleted": False,
            "record": {"id": key, "version": version, "content": content, "deleted": False}}


def gone(key: str, version: str) -> dict[str, Any]:
    return {"id": key, "version": version, "deleted": True, "record": None}


class History:
    """Events in time order: writes by processes 0.., polls by the consumer."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._t = itertools.count(1)
        self.epoch = 0

    def _op(self, process: int, f: str, key: Any, value: Any, kind: str, result: Any,
            error: str | None = None, node: str = "n1") -> History:
        self.events.append({"process": process, "type": "invoke", "f": f, "key": key,
                            "value": value, "time": float(next(self._t)), "node": node})
        if kind != "open":
            done = {"process": process, "type": kind, "f": f, "key": key, "value": result,
                    "time": float(next(self._t)), "node": node}
            if error is not None:
                done["error"] = error
            self.events.append(done)
        return self

    def put(self, key: str, content: str, version: str | None, kind: str = "ok",
            process: int = 0) -> History:
        result = {"content": content, "version": version} if kind == "ok" else {
            "content": content}
        return self._op(process, "put", key, {"content": content}, kind, result,
                        None if kind == "ok" else "timeout")

    def delete(self, key: str, version: str | None, kind: str = "ok",
               process: int = 1) -> History:
        return self._op(process, "delete", key, None, kind,
                        {"version": version} if kind == "ok" else None,
                        None if kind == "ok" else "timeout")

    def poll(self, *items: dict[str, Any], f: str = "poll", from_: str = "cursor",
             node: str = "n1") -> History:
        return self._op(CONSUMER, f, None, {"epoch": self.epoch, "from": from_, "limit": 200,
                                            "wait_s": 1},
                        "ok", {"epoch": self.epoch, "items": list(items), "cursor": "c"},
                        node=node)

    def failed_poll(self, error: str, status: int | None, f: str = "poll") -> History:
        return self._op(CONSUMER, f, None, {"epoch": self.epoch, "from": "cursor",
                                            "limit": 200, "wait_s": 1},
                        "fail", {"status": status}, error)

    def drain(self) -> History:
        """The final drain's two empty polls."""
        return self.poll(f="drain").poll(f="drain")


def test_versions_compare_as_hlc_then_node() -> None:
    assert parse_version(ver(10, "n2")) == (10, "n2")
    assert parse_version(ver(0x100)) > parse_version(ver(0xff)) > parse_version(ver(0xfe, "n9"))  # type: ignore[operator]
    assert parse_version("zz.n1") is None and parse_version("0a") is None
    assert parse_version(None) is None


def test_valid_history_with_duplicates_and_superseded_versions() -> None:
    h = History()
    h.put("k0", "a", ver(1)).put("k0", "b", ver(2), process=2).put("k1", "c", ver(3))
    h.delete("k1", ver(5))
    h.put("k0", "d", None, kind="info")  # unknown outcome: took effect, with a version unseen
    h.put("k2", "e", None, kind="fail")  # definitely not: never delivered
    h.delete("k2", None, kind="info")  # unknown outcome, never delivered: fine
    # k0's versions 1 and 2 are superseded by the unknown put's version 9 (delivered twice,
    # once again after the consumer moved: a duplicate); k1 delivered in order, the put again.
    h.poll(live("k1", ver(3), "c"), live("k1", ver(3), "c"), node="n1")
    h.poll(live("k0", ver(9, "n3"), "d"), gone("k1", ver(5)), node="n2")
    h.poll(live("k0", ver(9, "n3"), "d"), node="n3")
    h.drain()
    r = check_feed(h.events)
    assert r["valid"] is True, r["summary"]
    assert r["duplicates"] == 2 and r["superseded"] == 2 and r["delivered_exact"] == 2, r
    assert r["explained_by_unknown_writes"] == 2
    assert (r["lost_count"], r["phantom_count"], r["order_count"], r["mismatch_count"]) == (
        0, 0, 0, 0)
    assert r["acknowledged"] == 4 and r["indeterminate"] == 2 and r["failed"] == 1


def test_lost_acknowledged_write() -> None:
    h = History()
    h.put("k0", "a", ver(1)).put("k0", "b", ver(2)).delete("k1", ver(3))
    h.poll(live("k0", ver(1), "a"), gone("k1", ver(3)))  # k0's version 2 never comes
    undrained = check_feed(h.events)
    assert undrained["valid"] == "unknown" and undrained["unresolved_count"] == 1
    h.drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["lost_count"] == 1, r["summary"]
    assert r["lost"][0]["version"] == ver(2) and r["lost"][0]["newest_delivered"] == ver(1)


def test_lost_acknowledged_delete() -> None:
    h = History()
    h.put("k0", "a", ver(1)).delete("k0", ver(2))
    h.poll(live("k0", ver(1), "a")).drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["lost_count"] == 1
    assert r["lost"][0]["f"] == "delete"


def test_superseding_by_a_lower_node_name_at_the_same_hlc_is_not_enough() -> None:
    """(hlc, node) order: "n1" < "n2" at one hlc, so delivering (7, n1) does not cover (7, n2)."""
    h = History()
    h.put("k0", "a", ver(7, "n2")).put("k0", "b", ver(7, "n1"))
    h.poll(live("k0", ver(7, "n1"), "b")).drain()
    r = check_feed(h.events)
    assert r["lost_count"] == 1 and r["lost"][0]["version"] == ver(7, "n2")


def test_phantom_change() -> None:
    h = History()
    h.put("k0", "a", ver(1))
    h.poll(live("k0", ver(1), "a"), live("k0", ver(4), "zzz")).drain()  # nobody wrote zzz
    r = check_feed(h.events)
    assert r["valid"] is False and r["phantom_count"] == 1, r["summary"]
    assert r["phantom"][0]["content"] == "zzz"


def test_phantom_from_a_failed_put_and_a_delete_nobody_sent() -> None:
    h = History()
    h.put("k0", "a", ver(1)).put("k0", "b", None, kind="fail")
    h.poll(live("k0", ver(1), "a"), live("k0", ver(2), "b"), gone("k1", ver(3))).drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["phantom_count"] == 2
    assert {p["why"] for p in r["phantom"]} == {
        "its put definitely failed", "no delete of this version, none of unknown outcome on "
        "this key"}


def test_phantom_content_under_an_acknowledged_version() -> None:
    h = History()
    h.put("k0", "a", ver(1))
    h.poll(live("k0", ver(1), "not-a")).drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["phantom_count"] == 1


def test_order_violation() -> None:
    h = History()
    h.put("k0", "a", ver(1)).put("k0", "b", ver(2))
    h.poll(live("k0", ver(2), "b"), node="n1")
    h.poll(live("k0", ver(1), "a"), node="n2")  # the next node went back in time
    h.drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["order_count"] == 1, r["summary"]
    assert r["order"][0]["version"] == ver(1) and r["order"][0]["after"]["version"] == ver(2)
    assert r["lost_count"] == 0 and r["duplicates"] == 0


def test_order_restarts_only_after_an_expired_cursor() -> None:
    h = History()
    h.put("k0", "a", ver(1)).put("k0", "b", ver(2))
    h.poll(live("k0", ver(2), "b"))
    h.failed_poll("cursor_expired", 410)
    h.epoch = 1
    h.poll(live("k0", ver(1), "a"), live("k0", ver(2), "b"), from_="start").drain()
    r = check_feed(h.events)
    assert r["valid"] is True, r["summary"]
    assert r["cursor_expired"] == 1 and r["epochs"] == 2


def test_deleted_mismatch() -> None:
    h = History()
    h.put("k0", "a", ver(1)).delete("k1", ver(2))
    h.poll(gone("k0", ver(1)), live("k1", ver(2), "x")).drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["mismatch_count"] == 2, r["summary"]
    assert r["phantom_count"] == 0 and r["lost_count"] == 0


def test_malformed_items_and_rejected_cursors_are_anomalies() -> None:
    h = History()
    h.put("k0", "a", ver(1))
    bad = live("k0", ver(1), "a")
    bad["record"]["version"] = ver(0)
    h.poll(bad, {"id": "k0", "version": "nope", "deleted": False, "record": None})
    h.poll(live("k0", ver(1), "a")).drain()
    r = check_feed(h.events)
    assert r["valid"] is False and r["malformed_count"] == 2
    h2 = History()
    h2.put("k0", "a", ver(1)).poll(live("k0", ver(1), "a")).failed_poll("invalid", 400).drain()
    r2 = check_feed(h2.events)
    assert r2["valid"] is False and r2["cursor_rejected_count"] == 1


def test_nothing_acknowledged_is_unknown() -> None:
    h = History()
    h.put("k0", "a", None, kind="fail").drain()
    assert check_feed(h.events)["valid"] == "unknown"


def test_drain_must_end_with_two_empty_polls() -> None:
    """Lost is judged only after two consecutive empty drain polls: a drain that stopped while
    changes were still coming leaves the missing ones unresolved."""
    h = History()
    h.put("k0", "a", ver(1)).put("k1", "b", ver(2))
    h.poll(f="drain").poll(live("k0", ver(1), "a"), f="drain")
    r = check_feed(h.events)
    assert r["drained"] is False and r["valid"] == "unknown"
    assert r["lost_count"] == 0 and r["unresolved_count"] == 1
    h.poll(f="drain").poll(f="drain")
    r = check_feed(h.events)
    assert r["drained"] is True and r["valid"] is False and r["lost_count"] == 1
