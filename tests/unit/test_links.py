"""The test-only link file (spine.core.links) and the table a node follows (spine.runtime)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from spine.core.links import (
    MAX_DELAY_MS,
    MAX_FILE_BYTES,
    MAX_PEERS,
    Link,
    LinkFileError,
    parse_links,
)
from spine.runtime import LinkTable, Runtime


def test_a_file_names_each_peers_delay_jitter_and_loss() -> None:
    links = parse_links(json.dumps({
        "n2": {"delay_ms": 60, "jitter_ms": 5, "loss": 0.0},
        "n3": {"loss": 1},
        "n4": {"delay_ms": 0.5},
    }))
    assert links == {"n2": Link(60.0, 5.0, 0.0), "n3": Link(0.0, 0.0, 1.0),
                     "n4": Link(0.5, 0.0, 0.0)}


@pytest.mark.parametrize("text", ["", "   \n", "{}", b"{}", '{"n2": {}}',
                                  '{"n2": {"delay_ms": 0, "jitter_ms": 0, "loss": 0}}'])
def test_empty_files_and_idle_links_mean_no_links(text: str | bytes) -> None:
    assert parse_links(text) == {}


@pytest.mark.parametrize(("doc", "where"), [
    ({"n2": {"delay_ms": MAX_DELAY_MS + 1}}, "n2.delay_ms"),
    ({"n2": {"jitter_ms": MAX_DELAY_MS + 1}}, "n2.jitter_ms"),
    ({"n2": {"delay_ms": MAX_DELAY_MS, "jitter_ms": 1}}, "exceeds"),
    ({"n2": {"delay_ms": -1}}, "n2.delay_ms"),
    ({"n2": {"loss": 1.01}}, "n2.loss"),
    ({"n2": {"loss": -0.1}}, "n2.loss"),
    ({"n2": {"delay_ms": True}}, "expected a number"),
    ({"n2": {"delay_ms": "60"}}, "expected a number"),
    ({"n2": {"delay_ms": None}}, "expected a number"),
    ({"n2": {"dely_ms": 60}}, "unknown key 'dely_ms'"),
    ({"n2": 60}, "expected an object"),
    ({"": {"delay_ms": 1}}, "peer id"),
    ({"x" * 257: {"delay_ms": 1}}, "peer id"),
    ([{"n2": {}}], "expected an object of peers"),
    ({f"p{i}": {} for i in range(MAX_PEERS + 1)}, "peers exceed"),
])
def test_a_value_out_of_bounds_refuses_the_whole_file_naming_where(doc: object,
                                                                    where: str) -> None:
    with pytest.raises(LinkFileError, match=where.replace(".", r"\.")):
        parse_links(json.dumps(doc))


@pytest.mark.parametrize("text", ['{"n2": {"delay_ms": 60}', "not json", "[" * 100_000,
                                  '{"n2": {"delay_ms": NaN}}', '{"n2": {"delay_ms": 1e999}}',
                                  b"\xff\xfe{}"])
def test_malformed_text_is_refused(text: str | bytes) -> None:
    with pytest.raises(LinkFileError):
        parse_links(text)


def test_an_oversized_file_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(LinkFileError, match="exceeds"):
        parse_links(" " * (MAX_FILE_BYTES + 1))


def test_the_limits_themselves_are_accepted() -> None:
    doc = {f"p{i}": {"delay_ms": MAX_DELAY_MS - 1, "jitter_ms": 1, "loss": 1}
           for i in range(MAX_PEERS)}
    assert len(parse_links(json.dumps(doc))) == MAX_PEERS


@pytest.mark.parametrize(("link", "jitter_u", "loss_u", "want"), [
    (Link(60, 0, 0), 0.0, 0.0, 0.060),
    (Link(60, 10, 0), 0.5, 0.99, 0.065),
    (Link(60, 10, 0.25), 0.5, 0.2499, None),
    (Link(60, 10, 0.25), 0.5, 0.25, 0.065),
    (Link(0, 0, 1.0), 0.0, 0.9999, None),
])
def test_draw_holds_delay_plus_jitter_or_drops(link: Link, jitter_u: float, loss_u: float,
                                               want: float | None) -> None:
    got = link.draw(jitter_u, loss_u)
    assert got == want if want is None else got == pytest.approx(want)


def _table(seed: int = 7) -> LinkTable:
    return LinkTable(Runtime(rng=random.Random(seed)))


def test_a_peer_without_a_link_is_not_delayed_and_draws_nothing() -> None:
    table = _table()
    state = table._rt.rng.getstate()
    table.links = {"n2": Link(60, 0, 0)}
    assert table.delay_for("n3") == 0.0
    assert table.delay_for("n2") == pytest.approx(0.060)
    assert table._rt.rng.getstate() == state  # no jitter, no loss: the rng is left alone


def test_jitter_and_loss_draw_from_the_runtime_rng() -> None:
    table = _table(seed=3)
    table.links = {"n2": Link(60, 10, 0.5)}
    draws = [table.delay_for("n2") for _ in range(2000)]
    kept = [d for d in draws if d is not None]
    assert 0.45 < 1 - len(kept) / len(draws) < 0.55
    assert min(kept) >= 0.060 and max(kept) < 0.070
    again = _table(seed=3)
    again.links = dict(table.links)
    assert [again.delay_for("n2") for _ in range(2000)] == draws  # replays from its seed


def test_load_follows_the_file_and_a_bad_one_means_no_delay(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    table = _table()
    table.load(str(path))  # missing: no links, and no error to report
    assert table.links == {} and table.error is None
    path.write_text('{"n2": {"delay_ms": 60}}')
    table.load(str(path))
    assert table.links == {"n2": Link(60, 0, 0)} and table.error is None
    path.write_text('{"n2": {"delay_ms": 60000}}')
    table.load(str(path))
    assert table.links == {} and table.error is not None and "n2.delay_ms" in table.error
    path.write_text('{"n3": {"loss": 1}}')
    table.load(str(path))
    assert table.links == {"n3": Link(0, 0, 1.0)} and table.error is None
    assert table.delay_for("n3") is None
    path.unlink()
    table.load(str(path))
    assert table.links == {}


def test_load_reads_no_more_than_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "links.json"
    path.write_text('{"n2": {"delay_ms": 60}}' + " " * (2 * MAX_FILE_BYTES))
    table = _table()
    table.load(str(path))
    assert table.links == {} and table.error is not None and "exceeds" in table.error
