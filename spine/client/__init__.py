"""Python clients (sync and async) that carry the session token between calls.

Any node will do: pass several base URLs and the client spreads requests over them, like a
non-sticky load balancer; the session token keeps read-your-writes across nodes.
"""

from __future__ import annotations

import builtins
import itertools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from spine.client.errors import BY_CODE, SpineHTTPError, Unreachable, error_for

__all__ = ["BY_CODE", "AsyncClient", "Client", "SpineHTTPError", "Unreachable", "error_for",
           "tls_context"]


def _headers(api_key: str | None, session: str | None, level: str | None) -> dict[str, str]:
    """The request headers both clients send: JSON, the key, the session token, the level."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if session:
        headers["Spine-Session"] = session
    if level:
        headers["Spine-Consistency"] = level
    return headers


def tls_context(verify: bool | str = True) -> ssl.SSLContext:
    """The context for https URLs: `verify` True checks the server against the system CAs, a
    path against that CA bundle (PEM), False checks nothing (testing only)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _path(ns: str, *parts: str) -> str:
    return "/v1/ns/" + quote(ns, safe="") + "".join("/" + quote(p, safe="") for p in parts)


class Client:
    """A synchronous client (standard library only); `verify` as in tls_context."""

    def __init__(
        self,
        urls: str | Sequence[str] = "http://127.0.0.1:8788",
        *,
        api_key: str | None = None,
        session: str | None = None,
        consistency: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self._ssl = tls_context(verify)
        self._next = itertools.cycle(self.urls)
        self.api_key = api_key
        self.session = session
        self.consistency = consistency
        self.timeout = timeout
        self.last_coordinator: str | None = None

    def request(
        self, method: str, path: str, body: Any = None, *, consistency: str | None = None
    ) -> Any:
        """Send one request; returns the decoded JSON, raises SpineHTTPError on non-2xx."""
        data = None if body is None else json.dumps(body).encode()
        headers = _headers(self.api_key, self.session, consistency or self.consistency)
        req = urllib.request.Request(
            next(self._next) + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                self._absorb(resp.headers)
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            self._absorb(e.headers)
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise error_for(e.code, parsed) from None

    def text(self, path: str) -> str:
        """GET a plain-text resource (e.g. /metrics); SpineHTTPError on non-2xx."""
        req = urllib.request.Request(next(self._next) + path, method="GET",
                                     headers=_headers(self.api_key, None, None))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                body: str = resp.read().decode()
                return body
        except urllib.error.HTTPError as e:
            raise SpineHTTPError(e.code, e.read().decode(errors="replace")) from None

    def _absorb(self, headers: Any) -> None:
        token = headers.get("Spine-Session")
        if token:
            self.session = token
        self.last_coordinator = headers.get("Spine-Coordinator")

    def put(self, ns: str, mid: str, content: str, **fields: Any) -> Any:
        """Create or replace a memory."""
        return self.request("PUT", _path(ns, "memories", mid), {"content": content, **fields})

    def create(self, ns: str, content: str, **fields: Any) -> Any:
        """Create a memory with a minted id."""
        return self.request("POST", _path(ns, "memories"), {"content": content, **fields})

    def get(self, ns: str, mid: str, **kw: Any) -> Any:
        """Read a memory (SpineHTTPError 404 when absent)."""
        return self.request("GET", _path(ns, "memories", mid), **kw)

    def delete(self, ns: str, mid: str) -> Any:
        """Delete a memory."""
        return self.request("DELETE", _path(ns, "memories", mid))

    def history(self, ns: str, mid: str) -> Any:
        """Versions kept for a memory."""
        return self.request("GET", _path(ns, "memories", mid, "history"))

    def list(self, ns: str, **params: Any) -> Any:
        """One page of live memories."""
        qs = urlencode({k: v for k, v in params.items() if v is not None})
        return self.request("GET", _path(ns, "memories") + (f"?{qs}" if qs else ""))

    def batch(self, ns: str, items: builtins.list[dict[str, Any]]) -> Any:
        """Up to 1,000 upserts/deletes."""
        return self.request("POST", _path(ns, "memories", "_batch"), {"items": items})

    def search(self, ns: str, query: str | None = None, **body: Any) -> Any:
        """Semantic search."""
        if query is not None:
            body["query"] = query
        return self.request("POST", _path(ns, "search"), body)


class AsyncClient:
    """An asyncio client on aiohttp, with the same session-token handling and `verify`."""

    def __init__(
        self,
        urls: str | Sequence[str] = "http://127.0.0.1:8788",
        *,
        api_key: str | None = None,
        session: str | None = None,
        consistency: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        import aiohttp

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self._next = itertools.cycle(self.urls)
        self.api_key = api_key
        self.session = session
        self.consistency = consistency
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=tls_context(verify)),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self, method: str, path: str, body: Any = None, *, consistency: str | None = None
    ) -> Any:
        """Send one request; returns the decoded JSON, raises SpineHTTPError on non-2xx."""
        headers = _headers(self.api_key, self.session, consistency or self.consistency)
        data = None if body is None else json.dumps(body).encode()
        async with self._http.request(
            method, next(self._next) + path, data=data, headers=headers
        ) as resp:
            token = resp.headers.get("Spine-Session")
            if token:
                self.session = token
            raw = await resp.read()
            parsed = json.loads(raw) if raw else None
            if resp.status >= 300:
                raise error_for(resp.status, parsed)
            return parsed

    async def put(self, ns: str, mid: str, content: str, **fields: Any) -> Any:
        """Create or replace a memory."""
        return await self.request("PUT", _path(ns, "memories", mid),
                                  {"content": content, **fields})

    async def get(self, ns: str, mid: str, **kw: Any) -> Any:
        """Read a memory."""
        return await self.request("GET", _path(ns, "memories", mid), **kw)

    async def delete(self, ns: str, mid: str) -> Any:
        """Delete a memory."""
        return await self.request("DELETE", _path(ns, "memories", mid))

    async def search(self, ns: str, query: str | None = None, **body: Any) -> Any:
        """Semantic search."""
        if query is not None:
            body["query"] = query
        return await self.request("POST", _path(ns, "search"), body)
