"""docker/: the compose file validates, and its pieces fit together.

Images cannot be built here (no Docker engine, no registry to pull a base image from), so this
checks what can be checked without one: Debian's `docker-compose config` accepts the compose file,
the compose environment plus the secrets `make-secrets.sh` writes turn docker/cluster.yaml into a
config a node off loopback accepts (secret from a file, an admin key), and no secret is baked into
the image or the compose file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spine.core.config import FeedSection, load
from spine.core.secret_policy import check_secret_policy
from tests.integration.debian import ensure

pytestmark = pytest.mark.integration

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture
def deploy_dir(tmp_path: Path) -> Path:
    """A copy of docker/ with the secrets make-secrets.sh creates."""
    d = tmp_path / "docker"
    shutil.copytree(DOCKER, d, ignore=shutil.ignore_patterns("secrets"))
    r = subprocess.run(["sh", str(d / "make-secrets.sh")], capture_output=True, text=True,
                       check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (d / "secrets" / "cluster_secret").is_file()
    return d


def _compose(d: Path) -> dict[str, Any]:
    data = yaml.safe_load((d / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_docker_compose_accepts_the_file(deploy_dir: Path) -> None:
    binary = ensure("docker-compose", "docker-compose")
    r = subprocess.run([binary, "-f", str(deploy_dir / "compose.yaml"), "config"],
                       capture_output=True, text=True, check=False, timeout=120,
                       cwd=deploy_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert set(resolved["services"]) == {"spine1", "spine2", "spine3", "haproxy"}
    assert set(resolved["volumes"]) == {"spine1-data", "spine2-data", "spine3-data"}


def test_three_nodes_behind_haproxy_with_secrets_from_files(deploy_dir: Path) -> None:
    compose = _compose(deploy_dir)
    services = compose["services"]
    ports = services["haproxy"]["ports"]
    assert any(str(p).endswith("8788:8788") for p in ports), ports
    for i in (1, 2, 3):
        svc = services[f"spine{i}"]
        env = svc["environment"]
        assert env["SPINE_NODE"] == f"n{i}"
        assert any(v.startswith(f"spine{i}-data:") for v in svc["volumes"]), svc["volumes"]
        # The secret and the keys come from files, never from a literal in the compose file.
        assert "SPINE_CLUSTER__SECRET" not in env and "SPINE_AUTH__KEYS" not in env
        assert env["SPINE_CLUSTER__SECRET__FILE"].startswith("/run/secrets/")
    for secret in compose["secrets"].values():
        assert set(secret) == {"file"}, secret


def test_the_compose_environment_makes_a_config_a_node_off_loopback_accepts(
    deploy_dir: Path,
) -> None:
    env = {k: str(v) for k, v in _compose(deploy_dir)["services"]["spine2"]["environment"].items()}
    # What Docker does: secrets appear as files under /run/secrets; here, under the copy.
    secrets_dir = deploy_dir / "secrets"
    names = {"spine_secret": "cluster_secret", "spine_keys": "api_keys.yaml"}
    for key, value in list(env.items()):
        if value.startswith("/run/secrets/"):
            env[key] = str(secrets_dir / names[value.removeprefix("/run/secrets/")])
    env["SPINE_STORAGE__PATH"] = "/var/lib/spine"  # as the Dockerfile sets it
    cfg = load(deploy_dir / "cluster.yaml", env)
    assert cfg.cluster.secret == (secrets_dir / "cluster_secret").read_text().strip()
    assert [(k.name, k.role) for k in cfg.auth.keys] == [("admin", "admin")]
    assert [n.host for n in cfg.nodes] == ["spine1", "spine2", "spine3"]
    check_secret_policy(cfg, env["SPINE_NODE"], on_loopback=False)  # raises if refused
    again = subprocess.run(["sh", str(deploy_dir / "make-secrets.sh")], capture_output=True,
                           text=True, check=True)
    assert "wrote" not in again.stdout, "make-secrets.sh must leave existing secrets alone"
    assert load(deploy_dir / "cluster.yaml", env).cluster.secret == cfg.cluster.secret


def test_the_image_runs_as_a_user_with_a_readiness_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(stages) == 2, "a build stage and a runtime stage"
    runtime = text.split("\nFROM ", 2)[2]
    assert re.search(r"^USER\s+(?!root\b)\S+", runtime, flags=re.M), "the runtime is not root"
    assert "HEALTHCHECK" in runtime and "healthcheck.py" in runtime
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text()
    assert not re.search(r"SECRET\s*=|secret:\s*\S", text, flags=re.I), "no baked-in secret"
    shipped = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    assert "secret" not in shipped["cluster"] and "auth" not in shipped


def test_haproxy_accepts_the_shipped_config() -> None:
    binary = ensure("haproxy", "haproxy")
    r = subprocess.run([binary, "-c", "-dr", "-f", str(DOCKER / "haproxy.cfg")],
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (DOCKER / "haproxy.cfg").read_text()
    assert "balance roundrobin" in text and "option httpchk GET /readyz" in text
    assert not re.search(r"^\s*(cookie|stick|balance source|hash-type)", text, flags=re.M), \
        "no stickiness"
    # The change feed's backend outwaits the longest long poll a node allows.
    feed = text.split("backend spine_feed", 1)[1]
    wait = re.search(r"timeout server (\d+)s", feed)
    assert wait is not None and int(wait.group(1)) > FeedSection().max_wait_s + 5, feed
