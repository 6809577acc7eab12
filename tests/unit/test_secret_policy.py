"""The cluster secret policy: a node off loopback refuses a guessable secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spine.core.config import Config, from_dict
from spine.core.errors import ConfigError
from spine.core.secret_policy import MIN_SECRET_CHARS, check_secret_policy
from spine.node import Node

STRONG = "0123456789abcdef0123456789abcdef"


def cfg(host: str = "10.1.2.3", **cluster: Any) -> Config:
    return from_dict({"cluster": cluster, "nodes": [{"id": "n1", "host": host}],
                      "auth": {"insecure": True}})


@pytest.mark.parametrize(
    "secret",
    ["spine-local-secret", "change-me", "CHANGE-ME", "", "   ", "x" * (MIN_SECRET_CHARS - 1)],
)
def test_off_loopback_a_guessable_secret_is_refused(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_secret_policy(cfg(secret=secret), "n1", on_loopback=False)
    assert info.value.field == "cluster.secret"
    assert "10.1.2.3" in info.value.message


def test_the_default_secret_is_refused_off_loopback() -> None:
    # No `secret` key at all: the built-in default.
    with pytest.raises(ConfigError) as info:
        check_secret_policy(cfg(), "n1", on_loopback=False)
    assert info.value.field == "cluster.secret"


def test_a_previous_secret_is_held_to_the_same_rule() -> None:
    c = cfg(secret=STRONG, previous_secrets=[STRONG[::-1], "change-me"])
    with pytest.raises(ConfigError) as info:
        check_secret_policy(c, "n1", on_loopback=False)
    assert info.value.field == "cluster.previous_secrets[1]"


def test_a_strong_secret_passes_and_loopback_keeps_the_defaults_usable() -> None:
    check_secret_policy(cfg(secret=STRONG), "n1", on_loopback=False)
    check_secret_policy(cfg(secret="x" * MIN_SECRET_CHARS), "n1", on_loopback=False)
    check_secret_policy(cfg(host="127.0.0.1"), "n1", on_loopback=True)
    check_secret_policy(cfg(host="127.0.0.1", secret=""), "n1", on_loopback=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_a_node_off_loopback_will_not_start_with_the_default_secret(
    tmp_path: Path, host: str
) -> None:
    # --insecure waives API keys, never the secret policy.
    c = from_dict({"nodes": [{"id": "n1", "host": host}], "storage": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError) as info:
        Node(c, "n1", insecure=True)
    assert info.value.field == "cluster.secret"
    assert not (tmp_path / "n1").exists()  # refused before opening storage
