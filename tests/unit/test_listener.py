"""The listener's exposure rule: off loopback a node needs API keys (or --insecure) and a strong
cluster secret; on loopback the defaults stay usable."""

from __future__ import annotations

from typing import Any

import pytest

from spine.api.auth import Authenticator
from spine.api.listener import auth_mode, check_exposure, is_loopback
from spine.core.config import Config, from_dict
from spine.core.errors import ConfigError

STRONG = "0123456789abcdef0123456789abcdef"


def cfg(host: str, **sections: Any) -> Config:
    return from_dict({"nodes": [{"id": "n1", "host": host}], **sections})


@pytest.mark.parametrize(("host", "want"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("0.0.0.0", False), ("10.1.2.3", False), ("::", False),
])
def test_is_loopback_on_addresses(host: str, want: bool) -> None:
    assert is_loopback(host) is want


def test_off_loopback_without_api_keys_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        check_exposure(cfg("10.1.2.3", cluster={"secret": STRONG}), "n1", insecure=False)
    assert info.value.field == "auth.keys"
    assert "10.1.2.3" in info.value.message


@pytest.mark.parametrize("how", ["flag", "config"])
def test_insecure_waives_api_keys_but_not_the_secret(how: str) -> None:
    auth = {"insecure": how == "config"}
    check_exposure(cfg("10.1.2.3", cluster={"secret": STRONG}, auth=auth), "n1",
                   insecure=how == "flag")
    with pytest.raises(ConfigError) as info:
        check_exposure(cfg("10.1.2.3", auth=auth), "n1", insecure=how == "flag")
    assert info.value.field == "cluster.secret"


def test_on_loopback_the_defaults_pass() -> None:
    check_exposure(cfg("127.0.0.1"), "n1", insecure=False)


def test_auth_mode_says_why_auth_is_off() -> None:
    assert auth_mode(Authenticator([]), "127.0.0.1") == "off: every listener is on loopback"
    assert auth_mode(Authenticator([]), "10.1.2.3") == "off: --insecure"
