"""The `spine` CLI as a user runs it (a subprocess) against a real cluster with API keys: every
command through a dead URL first (the client fails over), the token kept per cluster, and
every user error one line on stderr with a non-zero status, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine.core.config import hash_key
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

ADMIN = "cli-admin-key-0123456789"
AGENT = "cli-agent-key-0123456789"


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("cli"))
    try:
        yield factory(api_key=ADMIN, auth={"keys": [
            {"name": "agent-a", "sha256": hash_key(AGENT), "role": "agent",
             "namespaces": ["team-a"]},
            {"name": "root", "sha256": hash_key(ADMIN), "role": "admin"},
        ]})
    finally:
        factory.close()


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def spine(*argv: str, key: str | None = ADMIN, session: Path | None = None,
          stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    if key is not None:
        env["SPINE_API_KEY"] = key
    if session is not None:
        env["SPINE_SESSION_FILE"] = str(session)
    return subprocess.run([sys.executable, "-m", "spine", *argv], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    return p.stdout


def one_line_failure(p: subprocess.CompletedProcess[str], *expect: str) -> str:
    """A non-zero status, exactly one line on stderr that says `expect`, no traceback."""
    assert p.returncode != 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.timeout(120)
def test_every_command_through_a_dead_url_first(cli_cluster: LocalCluster,
                                                tmp_path: Path) -> None:
    c = cli_cluster
    urls = ["--url", f"{dead_url()},{c.url('n1')}", "--url", c.url("n2")]
    sess = tmp_path / "session"
    rec = json.loads(ok(spine("put", "cli-ns", "m1", "--content", "the red fox jumps",
                              "--tags", "animal,red", "--metadata", '{"legs": 4}',
                              "--agent-id", "scout", *urls, session=sess)))
    assert rec["id"] == "m1" and rec["tags"] == ["animal", "red"]
    assert rec["metadata"] == {"legs": 4} and rec["agent_id"] == "scout"
    # The token is kept under this cluster's name, not as one global token.
    saved = json.loads(sess.read_text())
    assert list(saved) == [f"cluster:{c.config['cluster']['name']}"], saved
    minted = json.loads(ok(spine("put", "cli-ns", *urls, stdin="a blue whale sings\n",
                                 session=sess)))
    assert minted["content"] == "a blue whale sings\n" and minted["id"]

    assert json.loads(ok(spine("get", "cli-ns", "m1", *urls, session=sess)))["content"] == (
        "the red fox jumps")
    lines = ok(spine("list", "cli-ns", "--tag", "red", *urls, session=sess)).splitlines()
    assert lines == ["m1  [animal,red]  'the red fox jumps'"]
    page = json.loads(ok(spine("list", "cli-ns", "--limit", "1", "--json", *urls,
                               session=sess)))
    assert len(page["items"]) == 1 and page["next_cursor"]
    every = ok(spine("list", "cli-ns", "--limit", "1", "--all", *urls, session=sess))
    assert len(every.splitlines()) == 2
    assert ok(spine("list", "cli-ns", "--agent-id", "scout", *urls, session=sess)).startswith(
        "m1 ")

    ok(spine("put", "cli-ns", "m1", "--content", "the red fox sleeps", "--tags", "animal,red",
             "--metadata", '{"legs": 4}', *urls, session=sess))  # a PUT replaces every field
    hist = json.loads(ok(spine("history", "cli-ns", "m1", *urls, session=sess)))
    assert [v["content"] for v in hist["versions"]][:2] == ["the red fox sleeps",
                                                           "the red fox jumps"]

    found = json.loads(ok(spine("search", "cli-ns", "red fox", "--tags-any", "red,blue",
                                "--tags-all", "animal", "--metadata", '{"legs": 4}',
                                "--min-score", "-1", "--json", *urls, session=sess)))
    assert [r["id"] for r in found["results"]] == ["m1"]
    text = ok(spine("search", "cli-ns", "whale", "-k", "1", *urls, session=sess))
    assert minted["id"] in text

    ok(spine("rm", "cli-ns", "m1", *urls, session=sess))
    one_line_failure(spine("get", "cli-ns", "m1", *urls, session=sess), "404 not_found",
                     "field: id")
    out = ok(spine("status", *urls, session=sess))
    assert "n1" in out and "n3" in out


@pytest.mark.timeout(120)
def test_user_errors_are_one_line_never_a_traceback(cli_cluster: LocalCluster,
                                                    tmp_path: Path) -> None:
    c = cli_cluster
    url = ["--url", c.url("n1")]
    sess = tmp_path / "session"
    # Connection refused on every URL.
    dead = dead_url()
    one_line_failure(spine("get", "ns", "x", "--url", dead, session=sess), "cannot reach",
                     dead)
    # Bad JSON and a non-object in --metadata: refused before any request.
    one_line_failure(spine("put", "ns", "x", "--content", "c", "--metadata", "{bad", *url,
                           session=sess), "--metadata", "not valid JSON")
    one_line_failure(spine("search", "ns", "q", "--metadata", "[1]", *url, session=sess),
                     "JSON object")
    # An invalid namespace: the server's 400 names the field.
    one_line_failure(spine("put", "Not A Namespace", "x", "--content", "c", *url,
                           session=sess), "400 invalid", "field: namespace")
    one_line_failure(spine("search", "cli-ns", "q", "-k", "0", *url, session=sess),
                     "400 invalid", "field: k")
    # No key, a wrong key, and an agent key outside its namespaces.
    one_line_failure(spine("get", "team-a", "x", *url, key=None, session=sess),
                     "401 unauthorized", "--api-key")
    one_line_failure(spine("get", "team-a", "x", *url, key="wrong", session=sess), "401")
    one_line_failure(spine("put", "team-b", "x", "--content", "c", *url, key=AGENT,
                           session=sess), "403 forbidden")
    # A node that accepts the connection but never answers: a timeout, one line.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        one_line_failure(spine("get", "ns", "x", "--url", f"http://127.0.0.1:{port}",
                               "--request-timeout", "0.5", session=sess), f"127.0.0.1:{port}")
    # An agent key works in its own namespace (the CLI sends it from SPINE_API_KEY).
    rec = json.loads(ok(spine("put", "team-a", "k1", "--content", "ok", *url, key=AGENT,
                              session=sess)))
    assert rec["agent_id"] == "agent-a"
