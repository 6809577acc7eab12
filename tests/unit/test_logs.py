"""Every log line is one JSON object with the node id, whoever logged it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from spine.logs import configure


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def test_structlog_and_stdlib_lines_are_json_with_the_node(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("n7", "info")
    structlog.get_logger("spine.test").info("own_event", x=1)
    logging.getLogger("aiohttp.access").info("GET /healthz 200")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("aiohttp.server").debug("below the level: not shown")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert [r["event"] for r in records] == [
        "own_event", "GET /healthz 200", "Task exception was never retrieved"]
    assert all(r["node"] == "n7" and "timestamp" in r and "level" in r for r in records)
    assert records[1]["logger"] == "aiohttp.access"
    assert "RuntimeError: boom" in records[2]["exception"]
