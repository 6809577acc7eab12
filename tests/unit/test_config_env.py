"""Settings from `SPINE_…` environment variables laid over cluster.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine.core.config import is_string_setting, load
from spine.core.errors import ConfigError

BASE = """
cluster: {name: c1, secret: from-the-file-0123456789}
nodes: [{id: n1, host: 127.0.0.1, port: 8788}]
storage: {path: /tmp/x, sync: true}
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(BASE)
    return p


def test_without_env_the_file_rules(cfg_file: Path) -> None:
    cfg = load(cfg_file)
    assert cfg.cluster.secret == "from-the-file-0123456789"
    assert cfg.storage.sync is True


def test_variables_override_nested_settings_with_their_types(cfg_file: Path) -> None:
    env = {
        "SPINE_STORAGE__SYNC": "false",
        "SPINE_STORAGE__PATH": "/var/lib/spine",
        "SPINE_TIMEOUTS__WRITE_MS": "3500",
        "SPINE_CONSISTENCY__OVERRIDES__LOCK": "strong",
        "SPINE_SEEDS": '["spine1:10788", "spine2:10788"]',
    }
    cfg = load(cfg_file, env)
    assert cfg.storage.sync is False
    assert cfg.storage.path == "/var/lib/spine"
    assert cfg.timeouts.write_ms == 3500
    assert cfg.consistency.overrides == {"lock": "strong"}
    assert cfg.seeds == ["spine1:10788", "spine2:10788"]


def test_a_string_setting_keeps_digits_and_yaml_words_as_text(cfg_file: Path) -> None:
    cfg = load(cfg_file, {"SPINE_CLUSTER__SECRET": "12345678901234567890",
                          "SPINE_CLUSTER__NAME": "yes"})
    assert cfg.cluster.secret == "12345678901234567890"
    assert cfg.cluster.name == "yes"


def test_file_variables_read_secrets_from_files(cfg_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-a-docker-secret\n")
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{name: ops, sha256: '{'a' * 64}', role: admin}}\n")
    cfg = load(cfg_file, {"SPINE_CLUSTER__SECRET__FILE": str(secret),
                          "SPINE_AUTH__KEYS__FILE": str(keys)})
    assert cfg.cluster.secret == "s3cret-from-a-docker-secret"
    assert [k.name for k in cfg.auth.keys] == ["ops"]


def test_client_variables_and_unknown_sections_are_left_alone(cfg_file: Path) -> None:
    cfg = load(cfg_file, {"SPINE_URL": "http://x", "SPINE_API_KEY": "k", "HOME": "/root"})
    assert cfg.cluster.name == "c1"


def test_bad_values_name_the_setting(cfg_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"timeouts\.write_ms"):
        load(cfg_file, {"SPINE_TIMEOUTS__WRITE_MS": "soon"})
    with pytest.raises(ConfigError, match=r"storage\.nope: unknown key"):
        load(cfg_file, {"SPINE_STORAGE__NOPE": "1"})
    with pytest.raises(ConfigError, match="SPINE_CLUSTER__SECRET__FILE"):
        load(cfg_file, {"SPINE_CLUSTER__SECRET__FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="SPINE_CLUSTER__SECRET__X"):
        load(cfg_file, {"SPINE_CLUSTER__SECRET__X": "1"})


def test_is_string_setting_walks_sections_and_maps() -> None:
    assert is_string_setting(["cluster", "secret"])
    assert is_string_setting(["consistency", "overrides", "lock"])
    assert not is_string_setting(["timeouts", "write_ms"])
    assert not is_string_setting(["auth", "keys"])
    assert not is_string_setting(["nope"])
