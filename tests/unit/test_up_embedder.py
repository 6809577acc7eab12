"""`spine up` picks the semantic embedder when the default install carries it, keeps the one an
earlier run used, and the loader checks the embedder settings (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spine.cli import write_local_config
from spine.core.config import ConfigError, from_dict
from spine.core.local_cluster import local_cluster
from spine.storage.embedders import minilm_available


def test_test_harness_configs_keep_the_hash_embedder(tmp_path: Path) -> None:
    assert from_dict(local_cluster(3, 8788, str(tmp_path))).embedder.name == "hash"


def test_spine_up_chooses_minilm_when_installed(tmp_path: Path) -> None:
    _, cfg = write_local_config(tmp_path, 3, 8788)
    assert cfg["embedder"]["name"] == ("minilm" if minilm_available() else "hash")


def test_spine_up_keeps_the_embedder_an_earlier_run_used(tmp_path: Path) -> None:
    """Data embedded by one model must not be searched with another's vectors."""
    old = local_cluster(3, 8788, str(tmp_path))  # written before this setting existed: hash
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(old))
    _, cfg = write_local_config(tmp_path, 3, 8788)
    assert cfg["embedder"]["name"] == "hash"
    _, cfg = write_local_config(tmp_path, 3, 8788, extra={"embedder": {"name": "minilm"}})
    assert cfg["embedder"]["name"] == "minilm"  # an explicit --config wins
    _, cfg = write_local_config(tmp_path, 3, 8788)
    assert cfg["embedder"]["name"] == "minilm"


@pytest.mark.parametrize(("setting", "value"), [
    ("name", "word2vec"), ("threads", -1), ("threads", 257), ("queue_texts", 0),
    ("cache_queries", -1), ("threads", "two"),
])
def test_loader_rejects_bad_embedder_settings(tmp_path: Path, setting: str, value: object) -> None:
    data = local_cluster(3, 8788, str(tmp_path))
    data["embedder"] = {setting: value}
    with pytest.raises(ConfigError, match=rf"embedder\.{setting}"):
        from_dict(data)


def test_minilm_takes_only_its_own_dimension(tmp_path: Path) -> None:
    data = local_cluster(3, 8788, str(tmp_path))
    data["embedder"] = {"name": "minilm", "dim": 128}
    with pytest.raises(ConfigError, match=r"embedder\.dim"):
        from_dict(data)
