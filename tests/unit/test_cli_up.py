"""`spine up`'s cluster.yaml: created 0600, with a random secret kept across restarts."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import yaml

from spine.cli import write_local_config
from spine.core.config import from_dict
from spine.core.local_cluster import local_cluster


def secret_of(path: Path) -> str:
    s: str = yaml.safe_load(path.read_text())["cluster"]["secret"]
    return s


def test_config_is_private_and_its_secret_random(tmp_path: Path) -> None:
    data = (tmp_path / "local").resolve()
    path, cfg = write_local_config(data, 3, 8788)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = secret_of(path)
    assert from_dict(cfg).cluster.secret == secret
    assert len(secret) == 64 and int(secret, 16) >= 0
    # Not derivable from the path, as the old sha256(data dir) secret was.
    assert secret != hashlib.sha256(str(data).encode()).hexdigest()
    assert secret != local_cluster(3, 8788, str(data))["cluster"]["secret"]
    # Another data dir gets another secret; the same one keeps it across restarts.
    assert secret_of(write_local_config(tmp_path / "other", 3, 8788)[0]) != secret
    assert secret_of(write_local_config(data, 3, 8788)[0]) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data.iterdir()] == ["cluster.yaml"]  # no temp file left behind


def test_an_old_guessable_or_exposed_secret_is_replaced(tmp_path: Path) -> None:
    data = (tmp_path / "local").resolve()
    data.mkdir()
    path = data / "cluster.yaml"
    # What older versions wrote: world-readable, secret = sha256(data dir).
    path.write_text(yaml.safe_dump(local_cluster(3, 8788, str(data))))
    os.chmod(path, 0o644)
    derived = secret_of(path)
    write_local_config(data, 3, 8788)
    assert secret_of(path) != derived
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A strong secret in a file others could read is replaced too.
    strong = secret_of(path)
    os.chmod(path, 0o644)
    write_local_config(data, 3, 8788)
    assert secret_of(path) != strong
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_data_dir_gets_a_cluster_name_of_its_own(tmp_path: Path) -> None:
    # Clients keep session tokens per cluster name: two local clusters must not share one.
    a = write_local_config((tmp_path / "a").resolve(), 3, 8788)[1]["cluster"]["name"]
    b = write_local_config((tmp_path / "b").resolve(), 3, 9788)[1]["cluster"]["name"]
    again = write_local_config((tmp_path / "a").resolve(), 3, 8788)[1]["cluster"]["name"]
    assert a != b and a == again and a.startswith("local-")
    mine = write_local_config((tmp_path / "c").resolve(), 3, 8788,
                              extra={"cluster": {"name": "team"}})[1]
    assert mine["cluster"]["name"] == "team"  # --config wins
