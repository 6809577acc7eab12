"""`spine up` as a real local cluster: a killed node never takes the others down."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine.core.config import hash_key
from tests.harness.http_client import http_request
from tests.harness.ports import free_base_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


class Up:
    """One `spine up` process in its own session; its stderr goes to a file we read."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.base = free_base_port(3)
        self.err_path = tmp_path / "up.err"
        self.data = tmp_path / "data"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spine", "up", "--nodes", "3", "--base-port",
                 str(self.base), "--data", str(self.data), "--no-sync", *args],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)

    def text(self) -> str:
        return self.err_path.read_text(errors="replace")

    def pid(self, node: str, nth: int = 0) -> int:
        found = re.findall(rf"{node} started \(pid (\d+)\)", self.text())
        return int(found[nth])

    def port(self, node: str) -> int:
        return self.base + int(node[1:]) - 1

    def healthy(self, node: str, headers: dict[str, str] | None = None) -> bool:
        r = http_request(self.port(node), "GET", "/healthz", headers=headers, timeout=1)
        return r.status == 200

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Whatever node is left (it runs in a session of its own) is killed by its PID.
        for pid in map(int, re.findall(r"started \(pid (\d+)\)", self.text())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[list[Up]]:
    made: list[Up] = []
    yield made
    for u in made:
        u.close()


def _write_and_read(up: Up, node_w: str, node_r: str, key: str,
                    headers: dict[str, str] | None = None) -> bool:
    h = dict(headers or {})
    w = http_request(up.port(node_w), "PUT", f"/v1/ns/up/memories/{key}", {"content": key}, h)
    if w.status not in (200, 201):
        return False
    h["Spine-Session"] = w.headers["Spine-Session"]
    r = http_request(up.port(node_r), "GET", f"/v1/ns/up/memories/{key}", headers=h)
    return r.status == 200 and r.json()["content"] == key


def test_a_killed_node_is_restarted_and_the_others_keep_serving(
    tmp_path: Path, up_factory: list[Up]
) -> None:
    # --config lays the user's settings over the generated ones: here an API key.
    user = tmp_path / "mine.yaml"
    user.write_text(f"auth: {{keys: [{{name: me, sha256: '{hash_key('k-123')}', role: admin}}]}}"
                    "\n")
    up = Up(tmp_path, "--config", str(user))
    up_factory.append(up)
    key = {"Authorization": "Bearer k-123"}
    for n in ("n1", "n2", "n3"):
        wait_until(lambda n=n: up.healthy(n, key), 30.0, 0.1, f"{n} to start")
    out = up.text()
    for port in (up.base, up.base + 1000, up.base + 2000):  # n1's HTTP, RPC, gossip
        assert f":{port}" in out, out
    assert http_request(up.port("n1"), "GET", "/v1/ns/up/memories/x").status == 401
    old = up.pid("n2")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: "n2 exited (killed by SIGKILL)" in up.text(), 10.0, 0.05,
               "spine up to report n2's exit")
    assert up.proc.poll() is None, "spine up stopped when one node died"
    wait_until(lambda: _write_and_read(up, "n1", "n3", "while-n2-down", key), 20.0, 0.1,
               "n1 and n3 to serve a session write and read")
    wait_until(lambda: len(re.findall(r"n2 started", up.text())) == 2, 20.0, 0.1,
               "n2 to be restarted")
    assert up.pid("n2", 1) != old
    wait_until(lambda: up.healthy("n2", key), 30.0, 0.1, "n2 to serve again")
    up.close()
    assert up.proc.returncode == 0, up.text()
    assert "Traceback" not in up.text()


def test_on_exit_leave_reports_the_node_and_leaves_it_down(
    tmp_path: Path, up_factory: list[Up]
) -> None:
    up = Up(tmp_path, "--on-exit", "leave")
    up_factory.append(up)
    for n in ("n1", "n2", "n3"):
        wait_until(lambda n=n: up.healthy(n), 30.0, 0.1, f"{n} to start")
    os.kill(up.pid("n3"), signal.SIGKILL)
    wait_until(lambda: "n3 exited (killed by SIGKILL); left down" in up.text(), 10.0, 0.05,
               "spine up to report n3's exit")
    wait_until(lambda: _write_and_read(up, "n2", "n1", "while-n3-down"), 20.0, 0.1,
               "n1 and n2 to serve")
    assert up.proc.poll() is None
    assert len(re.findall(r"n3 started", up.text())) == 1


def test_a_port_clash_is_one_line_naming_the_port(tmp_path: Path) -> None:
    base = free_base_port(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1001))  # n2's RPC port
        s.listen()
        r = subprocess.run(
            [sys.executable, "-m", "spine", "up", "--nodes", "3", "--base-port", str(base),
             "--data", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"127.0.0.1:{base + 1001}/tcp (n2 RPC) is in use" in lines[0]


def test_a_bad_config_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    user = tmp_path / "bad.yaml"
    user.write_text("timeouts: {write_ms: soon}\n")
    r = subprocess.run(
        [sys.executable, "-m", "spine", "up", "--base-port", str(free_base_port(3)),
         "--data", str(tmp_path / "data"), "--config", str(user)],
        capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "timeouts.write_ms" in r.stderr, r.stderr
