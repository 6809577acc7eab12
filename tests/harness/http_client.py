"""One plain HTTP request to a node (`http_request` → `Reply`), and the Prometheus text parser
for its `/metrics`. Standard library only: the harness must not share the client under test."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from tests.harness.ports import HOST


@dataclass
class Reply:
    """An HTTP reply: status, headers and raw body (`.json()` decodes it)."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def decoded(self) -> Any:
        """The body as JSON, else as text; None when empty."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode("utf-8", "replace")

    def error(self) -> dict[str, Any]:
        """The `error` object of a JSON error body (fails the test if the shape is wrong)."""
        data = self.json()
        assert isinstance(data, dict) and set(data) == {"error"}, data
        err = data["error"]
        assert isinstance(err, dict), data
        assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), data
        return err


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    *,
    host: str = HOST,
) -> Reply:
    """One HTTP request to `host:port`; `body` is bytes as is, else JSON-encoded."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.msg, resp.read())
    finally:
        conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition → (name, labels, value) samples."""
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a Prometheus sample: {line!r}")
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out
