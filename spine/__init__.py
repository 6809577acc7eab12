"""Spine: a clustered memory store for fleets of AI agents (`from spine import Client`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from spine.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    # Imported on first use: a node importing spine.* never loads the HTTP client library.
    if name in ("Client", "AsyncClient"):
        import spine.client

        return getattr(spine.client, name)
    raise AttributeError(f"module 'spine' has no attribute {name!r}")
