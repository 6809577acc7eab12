"""Structured JSON logs (structlog) with the node id on every line.

Spine's own loggers are structlog's; the standard library's (aiohttp's access and server logs,
asyncio's "Task exception was never retrieved", anything a library logs) go through
structlog's `ProcessorFormatter`, so every line on stderr is one JSON object with `node`,
`level`, `timestamp` and `logger`, and a traceback is a field of it, never loose lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor


def configure(node_id: str, level: str = "info") -> None:
    """Send JSON lines to stderr, each carrying `node`, from structlog and stdlib loggers."""
    lvl = getattr(logging, level.upper(), logging.INFO)

    def add_node(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.setdefault("node", node_id)
        return event

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_node,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
