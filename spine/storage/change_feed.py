"""The store's change feed: derived structures follow LMDB commit by commit (DESIGN §6).

Subscribers (the vector index, the anti-entropy hash trees) register on the store; after each
commit that applied or purged records, every subscriber is called with the `Applied` of each,
in commit order, on the committer (the writer thread, or the event loop in loop mode), before
the commit's callers are answered. A subscriber must be quick (hand the batch to its own thread)
and must not fail the commit: one that raises is logged and counted, and the others still run.
A subscriber that cannot keep up reads the change log (`Store.changes_since`) to catch up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from spine.storage.layout import Applied

log = structlog.get_logger("spine.store")

Subscriber = Callable[[list[Applied]], None]


class ChangeFeed:
    """The subscribers of one store and the calls that failed."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.failures = 0  # subscriber calls that raised

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` after every later commit that changed records."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop calling `subscriber` (no error when it was not subscribed)."""
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    @property
    def subscribers(self) -> Sequence[Subscriber]:
        """The subscribers, in the order they are called."""
        return tuple(self._subscribers)

    def publish(self, applied: list[Applied]) -> None:
        """Hand one commit's changes to every subscriber (nothing when it changed none)."""
        if not applied:
            return
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(applied)
            except Exception:  # a derived structure failing must not fail the commit
                self.failures += 1
                log.exception("change_feed_subscriber_failed", subscriber=repr(subscriber),
                              first_seq=applied[0].seq, last_seq=applied[-1].seq)
