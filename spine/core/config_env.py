"""Settings from environment variables, laid over cluster.yaml (twelve-factor, as containers want).

`SPINE_<SECTION>__<KEY>[__<KEY>…]` sets one setting: double underscores separate the levels of
the path and the names are the YAML keys upper-cased (`SPINE_CLUSTER__SECRET`,
`SPINE_STORAGE__PATH`, `SPINE_CONSISTENCY__OVERRIDES__LOCK=strong`). A string setting takes the
value as it is (a secret of digits stays a string); any other is parsed as a YAML scalar or flow
collection, so `SPINE_STORAGE__SYNC=false` is a boolean and `SPINE_SEEDS='["spine1:10788"]'` a
list. A name ending in `__FILE` reads the value from that file
instead (Docker and Kubernetes secrets: `SPINE_CLUSTER__SECRET__FILE=/run/secrets/spine_secret`),
with one trailing newline dropped. Variables that do not name a section of the config
(`SPINE_URL`, `SPINE_API_KEY`, used by the client) are left alone; the loader then checks every
value exactly as it checks the file's, naming the variable's path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

from spine.core.errors import ConfigError

PREFIX = "SPINE_"
FILE_SUFFIX = "__FILE"


def overlay_env(
    data: dict[str, Any],
    env: Mapping[str, str],
    sections: frozenset[str],
    read_file: Callable[[str], str],
    is_string: Callable[[list[str]], bool],
) -> dict[str, Any]:
    """`data` with every `SPINE_…` variable whose first level is in `sections` laid over it.

    Pure apart from `read_file`, which the caller supplies for `…__FILE` variables;
    `is_string(path)` tells whether the setting at `path` is a string."""
    out = _copy(data)
    for name in sorted(env):
        if not name.startswith(PREFIX):
            continue
        rest = name[len(PREFIX):]
        from_file = rest.endswith(FILE_SUFFIX)
        if from_file:
            rest = rest[: -len(FILE_SUFFIX)]
        path = [p.lower() for p in rest.split("__")]
        if path[0] not in sections:
            continue
        if any(not p for p in path):
            raise ConfigError(f"{name}: empty key in the path", field=name)
        raw = env[name]
        if from_file:
            try:
                raw = read_file(raw)
            except OSError as e:
                raise ConfigError(f"{name}: cannot read {raw}: {e}", field=name) from None
            raw = raw.removesuffix("\n")
        _set(out, path, raw if is_string(path) else _parse(name, raw), name)
    return out


def _parse(name: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"{name}: not a valid value: {raw!r}", field=name) from None


def _set(tree: dict[str, Any], path: list[str], value: Any, name: str) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{name}: {'.'.join(path)} goes through a value that is not a"
                              " mapping", field=name)
        node = child
    node[path[-1]] = value


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def merge_settings(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it: mappings merge key by key, anything else replaces."""
    out = _copy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out
