"""Unit tests for spine.core.metrics: the Prometheus text exposition format."""

from __future__ import annotations

import re

import pytest

from spine.core.metrics import Registry, SpineMetrics

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? (\S+)")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """A strict reader of the text format: HELP/TYPE per family, then well-formed samples."""
    assert text.endswith("\n")
    meta: dict[str, tuple[str, str]] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    current = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("# HELP "):
            name, help_ = line[len("# HELP "):].split(" ", 1)
            typ = lines[i + 1]
            assert typ.startswith(f"# TYPE {name} "), typ
            meta[name] = (help_, typ.rsplit(" ", 1)[1])
            current = name
            i += 2
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name == current or name.startswith(current + "_"), (name, current)
        pairs = {k: unescape(v) for k, v in LABEL_PAIR.findall(labels or "")}
        samples.append((name, pairs, float(value)))
        i += 1
    return meta, samples


def test_counter_renders_help_type_and_one_sample_per_label_set() -> None:
    reg = Registry()
    c = reg.counter("spine_things_total", "things done", ("op", "level"))
    c.inc("put", "strong")
    c.inc("put", "strong", by=2)
    c.inc("get", "eventual")
    assert c.get("put", "strong") == 3
    assert c.get("nope", "x") == 0
    meta, samples = parse(reg.render())
    assert meta == {"spine_things_total": ("things done", "counter")}
    assert sorted(samples, key=repr) == [
        ("spine_things_total", {"op": "get", "level": "eventual"}, 1.0),
        ("spine_things_total", {"op": "put", "level": "strong"}, 3.0),
    ]


def test_unlabelled_counter_and_empty_metrics() -> None:
    reg = Registry()
    reg.counter("a_total", "a")
    b = reg.counter("b_total", "b")
    b.inc()
    text = reg.render()
    assert "b_total 1\n" in text
    meta, samples = parse(text)
    assert set(meta) == {"a_total", "b_total"}
    assert samples == [("b_total", {}, 1.0)]


def test_label_values_are_escaped() -> None:
    reg = Registry()
    c = reg.counter("x_total", "x", ("peer",))
    nasty = 'a\\b"c\nd'
    c.inc(nasty)
    text = reg.render()
    assert 'peer="a\\\\b\\"c\\nd"' in text
    _, samples = parse(text)
    assert samples == [("x_total", {"peer": nasty}, 1.0)]


def test_histogram_buckets_are_cumulative_and_inf_equals_count() -> None:
    reg = Registry()
    h = reg.histogram("lat_seconds", "latency", ("route",))
    observations = [0.0001, 0.001, 0.001, 0.003, 0.7, 3.0, 99.0]
    for x in observations:
        h.observe(x, "get")
    h.observe(0.02, "put")
    assert h.count("get") == len(observations)
    assert h.count("none") == 0
    meta, samples = parse(reg.render())
    assert meta == {"lat_seconds": ("latency", "histogram")}
    buckets = [(s[1]["le"], s[2]) for s in samples
               if s[0] == "lat_seconds_bucket" and s[1]["route"] == "get"]
    assert buckets[-1][0] == "+Inf"
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds)
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)  # cumulative
    for le, c in buckets:
        assert c == sum(1 for x in observations if x <= float(le))  # le is inclusive
    count = next(s[2] for s in samples if s[0] == "lat_seconds_count" and s[1] == {"route": "get"})
    total = next(s[2] for s in samples if s[0] == "lat_seconds_sum" and s[1] == {"route": "get"})
    assert count == buckets[-1][1] == len(observations)
    assert total == pytest.approx(sum(observations))


def test_a_value_on_a_bucket_bound_lands_in_that_bucket() -> None:
    reg = Registry()
    h = reg.histogram("h", "h")
    h.observe(0.5)
    _, samples = parse(reg.render())
    by_le = {s[1]["le"]: s[2] for s in samples if s[0] == "h_bucket"}
    assert by_le["0.25"] == 0
    assert by_le["0.5"] == 1
    assert by_le["+Inf"] == 1


def test_gauge_reads_its_callback_at_scrape_time() -> None:
    state = {("n1",): 3.0}
    reg = Registry()
    reg.gauge("g", "g", ("node",), read=lambda: dict(state))
    g2 = reg.gauge("g2", "set directly")
    g2.set(1.5)
    assert parse(reg.render())[1] == [("g", {"node": "n1"}, 3.0), ("g2", {}, 1.5)]
    state[("n2",)] = 4.0
    meta, samples = parse(reg.render())
    assert meta["g"] == ("g", "gauge")
    assert ("g", {"node": "n2"}, 4.0) in samples


def test_large_counts_render_exactly() -> None:
    reg = Registry()
    c = reg.counter("big_total", "big")
    c.inc(by=1_234_567)
    _, samples = parse(reg.render())
    assert samples == [("big_total", {}, 1_234_567.0)]


def test_spine_metrics_render_and_carry_the_contract_names() -> None:
    m = SpineMetrics()
    m.requests.inc("get", "session", "200")
    m.latency.observe(0.01, "get", "session")
    m.conflicts.inc()
    meta, samples = parse(m.registry.render())
    for name in ("spine_requests_total", "spine_request_seconds", "spine_conflicts_total",
                 "spine_quorum_failures_total", "spine_clock_skew_rejects_total",
                 "spine_hints_written_total", "spine_read_repairs_total"):
        assert name in meta
    assert meta["spine_request_seconds"][1] == "histogram"
    assert ("spine_conflicts_total", {}, 1.0) in samples
