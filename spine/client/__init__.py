"""Python clients (sync and async) for Spine: any node will do.

Pass several node URLs: calls spread over them like a non-sticky balancer and fail over when a
node cannot be reached; the session token (merged from every reply, never replaced) keeps
read-your-writes across nodes.
"""

from __future__ import annotations

from spine.client.aio import AsyncClient
from spine.client.base import BATCH_LIMIT, tls_context
from spine.client.errors import (
    BY_CODE,
    BatchFailed,
    ClockSkew,
    Conflict,
    CursorExpired,
    Fenced,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    LeaseHeld,
    LeaseLost,
    NotFound,
    NotServing,
    Overloaded,
    PeerUnavailable,
    PreconditionFailed,
    QuorumUnavailable,
    RequestTimeout,
    SessionUnavailable,
    SpineHTTPError,
    StorageFailed,
    Timeout,
    TooLarge,
    TooManyNamespaces,
    Unauthorized,
    Unreachable,
    error_for,
)
from spine.client.feed import AsyncFollower, Follower
from spine.client.leases import AsyncHeldLease, HeldLease, LeaseKeeper
from spine.client.session import TokenStore, merge_tokens, token_keys
from spine.client.sync import Client
from spine.client.types import (
    BatchItemResult,
    BatchResult,
    Change,
    ChangesPage,
    Deleted,
    History,
    Lease,
    Page,
    Record,
    Reply,
    SearchHit,
    SearchResult,
)
from spine.core.errors import SpineError

__all__ = [
    "BATCH_LIMIT", "BY_CODE", "AsyncClient", "AsyncFollower", "AsyncHeldLease", "BatchFailed",
    "BatchItemResult", "BatchResult", "Change", "ChangesPage", "Client", "ClockSkew", "Conflict",
    "CursorExpired", "Deleted", "Fenced", "Follower", "Forbidden", "HeldLease", "History",
    "InsufficientStorage", "InvalidInput", "Lease", "LeaseHeld", "LeaseKeeper", "LeaseLost",
    "NotFound", "NotServing", "Overloaded", "Page", "PeerUnavailable", "PreconditionFailed",
    "QuorumUnavailable", "Record", "Reply", "RequestTimeout", "SearchHit", "SearchResult",
    "SessionUnavailable", "SpineError", "SpineHTTPError", "StorageFailed", "Timeout", "TokenStore",
    "TooLarge", "TooManyNamespaces", "Unauthorized", "Unreachable", "error_for", "merge_tokens",
    "tls_context", "token_keys",
]
