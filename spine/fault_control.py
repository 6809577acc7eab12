"""Test-only fault control of a node process: the process harness skews the node's wall clock
(`SPINE_TEST_CLOCK_FILE`, its clock-skew nemesis) and delays or drops what the node sends each
peer (`SPINE_TEST_LINK_FILE`, its `set_link` and `regions`) through files the node re-reads
while it runs. Without those variables (every real deployment) nothing here runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import structlog

from spine.core.metrics import Registry
from spine.runtime import (
    CLOCK_FILE_ENV,
    LINK_FILE_ENV,
    LinkTable,
    Runtime,
    follow_clock_file,
    follow_link_file,
)

log = structlog.get_logger("spine.node")


class FaultControl:
    """The files named in `environ` and the tasks that follow them; `links` is the link table
    the node's RPC client and gossip sockets obey (None without a link file)."""

    def __init__(
        self, rt: Runtime, registry: Registry, environ: Mapping[str, str] = os.environ
    ) -> None:
        self._rt = rt
        self._clock_file = environ.get(CLOCK_FILE_ENV) or None
        self._link_file = environ.get(LINK_FILE_ENV) or None
        self._tasks: list[asyncio.Task[None]] = []
        self.links: LinkTable | None = None
        if self._link_file is None:
            return
        self.links = links = LinkTable(rt)
        links.load(self._link_file)  # in force before the first packet
        registry.gauge(
            "spine_test_link_delay_ms", "test-only: the delay this node adds to what it"
            " sends each peer (SPINE_TEST_LINK_FILE)", ("peer",),
            lambda: {(p,): lk.delay_ms for p, lk in links.links.items()})
        registry.gauge(
            "spine_test_link_loss", "test-only: the share of what this node sends each peer"
            " that it drops (SPINE_TEST_LINK_FILE)", ("peer",),
            lambda: {(p,): lk.loss for p, lk in links.links.items()})

    def start(self) -> None:
        """Follow the files (a process node's start; the simulator has none)."""
        if self._clock_file is not None:
            self._tasks.append(asyncio.create_task(follow_clock_file(self._rt, self._clock_file)))
            log.warning("test_clock_control", file=self._clock_file)
        if self.links is not None and self._link_file is not None:
            self._tasks.append(asyncio.create_task(follow_link_file(self.links, self._link_file)))
            log.warning("test_link_control", file=self._link_file)

    def stop(self) -> None:
        """Stop following them."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
