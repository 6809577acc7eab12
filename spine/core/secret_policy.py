"""The cluster secret policy: a node reachable from other hosts refuses a guessable secret.

The cluster secret alone authenticates internal RPC and gossip, and RPC reads every namespace,
so a default, example, empty or short secret on a listener off loopback hands the data to
anyone who can reach the port (issue 14). Pure: the caller says whether the node's address is
loopback (resolving a name is I/O).
"""

from __future__ import annotations

from spine.core.config import Config
from spine.core.errors import ConfigError

# Secrets anyone can guess: the built-in default and the example file's placeholder.
KNOWN_SECRETS = frozenset({"spine-local-secret", "change-me", "changeme", "secret"})
# Shortest cluster secret a node off loopback accepts (characters); `spine up` writes 64.
MIN_SECRET_CHARS = 16


def check_secret_policy(cfg: Config, node_id: str, *, on_loopback: bool) -> None:
    """Refuse a guessable cluster secret on a node that listens off loopback.

    The cluster secret alone authenticates internal RPC and gossip, and RPC reads every
    namespace, so off loopback it must be neither the default, the example's `change-me`, empty
    nor shorter than MIN_SECRET_CHARS; the same holds for every secret in previous_secrets.
    On loopback only local processes can reach the ports, and the defaults stay usable.
    """
    if on_loopback:
        return
    host = cfg.node(node_id).host
    named = [("cluster.secret", cfg.cluster.secret)]
    named += [(f"cluster.previous_secrets[{i}]", s)
              for i, s in enumerate(cfg.cluster.previous_secrets)]
    for where, secret in named:
        if not secret.strip():
            why = "is empty"
        elif secret.strip().lower() in KNOWN_SECRETS:
            why = "is a default or example value"
        elif len(secret) < MIN_SECRET_CHARS:
            why = f"is shorter than {MIN_SECRET_CHARS} characters"
        else:
            continue
        raise ConfigError(
            f"{where}: {why}; node {node_id} listens on {host}, not loopback, so the secret must"
            f" be random and at least {MIN_SECRET_CHARS} characters"
            " (e.g. python -c 'import secrets; print(secrets.token_hex(32))')",
            field=where,
        )
