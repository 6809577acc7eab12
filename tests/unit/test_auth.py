"""API keys: case-insensitive scheme, agent keys kept off the cluster views, and the config
checks on keys (issue 14)."""

from __future__ import annotations

import pytest

from spine.api.auth import Authenticator
from spine.core.config import ApiKey, from_dict, hash_key
from spine.core.errors import ConfigError, Forbidden, Unauthorized

AGENT = ApiKey("bot", hash_key("agent-secret"), "agent", ["team-a"])
ADMIN = ApiKey("ops", hash_key("admin-secret"), "admin")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    auth = Authenticator([AGENT, ADMIN])
    assert auth.authenticate(f"{scheme} agent-secret").name == "bot"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic agent-secret",
                                    "Bearerx agent-secret", "Bearer wrong"])
def test_missing_or_wrong_credentials_are_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        Authenticator([AGENT]).authenticate(header)


def test_agent_keys_lose_the_cluster_views_unless_configured() -> None:
    auth = Authenticator([AGENT, ADMIN])
    with pytest.raises(Forbidden):
        auth.require_cluster_view(auth.authenticate("Bearer agent-secret"))
    auth.require_cluster_view(auth.authenticate("Bearer admin-secret"))
    opened = Authenticator([AGENT, ADMIN], agents_see_cluster=True)
    opened.require_cluster_view(opened.authenticate("Bearer agent-secret"))


def test_principal_carries_the_keys_namespace_limit() -> None:
    key = ApiKey("bot", hash_key("s"), "agent", ["*"], max_namespaces=5)
    assert Authenticator([key]).authenticate("Bearer s").max_namespaces == 5


def _keys(*keys: dict[str, object]) -> dict[str, object]:
    return {"auth": {"keys": list(keys)}}


def test_config_rejects_duplicate_key_digests_naming_the_key() -> None:
    digest = hash_key("same")
    with pytest.raises(ConfigError, match=r"auth\.keys\[1\]\.sha256") as exc:
        from_dict(_keys({"name": "a", "sha256": digest},
                        {"name": "b", "sha256": digest.upper()}))
    assert "auth.keys[0]" in exc.value.message


@pytest.mark.parametrize("bad", ["Team-A", "", "a/b", "x" * 65, "-lead"])
def test_config_rejects_invalid_namespaces_in_a_keys_list(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.keys\[0\]\.namespaces\[1\]"):
        from_dict(_keys({"name": "a", "sha256": hash_key("k"), "namespaces": ["ok", bad]}))


def test_config_accepts_star_and_valid_namespaces() -> None:
    cfg = from_dict(_keys({"name": "a", "sha256": hash_key("k"), "namespaces": ["*", "team-a"],
                           "max_namespaces": 3}))
    assert cfg.auth.keys[0].max_namespaces == 3 and not cfg.auth.agents_see_cluster
