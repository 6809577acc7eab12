"""`spine`: serve a node, run a local cluster, and talk to one from the shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import ssl
import sys
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from spine.core.config import from_dict, load, local_cluster
from spine.core.config_env import merge_settings
from spine.core.errors import ConfigError
from spine.core.secret_policy import KNOWN_SECRETS, MIN_SECRET_CHARS


def _session_file(args: argparse.Namespace) -> Path:
    return Path(args.session_file or os.environ.get("SPINE_SESSION_FILE")
                or Path.home() / ".spine" / "session")


def _client(args: argparse.Namespace) -> Any:
    from spine.client import Client

    path = _session_file(args)
    token = path.read_text().strip() if path.exists() else None
    return Client(args.url.split(","), api_key=args.api_key or os.environ.get("SPINE_API_KEY"),
                  session=token or None, consistency=args.consistency, verify=_verify(args))


def _verify(args: argparse.Namespace) -> bool | str:
    """How https URLs are checked: against --cacert / SPINE_CACERT, else the system CAs."""
    cacert: str | None = args.cacert
    return cacert or True


def _save_session(args: argparse.Namespace, client: Any) -> None:
    if client.session:
        path = _session_file(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(client.session)


def cmd_serve(args: argparse.Namespace) -> int:
    from spine.logs import configure
    from spine.node import run_node

    cfg = load(args.config, env=os.environ)
    configure(args.node, cfg.log.level)
    _install_uvloop()
    asyncio.run(run_node(cfg, args.node, insecure=args.insecure, join=args.join))
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _local_secret(cfg_path: Path, data: Path) -> str:
    """The cluster secret an earlier `spine up` wrote for this data dir, else a new random one.

    An earlier secret is kept only if no one else could read its file and it is not guessable
    (the data dir's SHA-256 that older versions wrote, a default, a short one).
    """
    mode = 0o777
    try:
        mode = cfg_path.stat().st_mode
        old = yaml.safe_load(cfg_path.read_text())
    except (OSError, yaml.YAMLError):
        old = None
    cluster = old.get("cluster") if isinstance(old, dict) else None
    secret = cluster.get("secret") if isinstance(cluster, dict) else None
    if (
        isinstance(secret, str)
        and not mode & 0o077
        and len(secret) >= MIN_SECRET_CHARS
        and secret.lower() not in KNOWN_SECRETS
        and secret != hashlib.sha256(str(data).encode()).hexdigest()
    ):
        return secret
    return secrets.token_hex(32)


def _write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only: a new file created 0600, renamed over the old
    one (so the secret is never in a file anyone else may read, not even for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_local_config(
    data: Path, nodes: int, base_port: int, *, sync: bool = True,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the cluster.yaml `spine up` runs (mode 0600, random secret kept across runs), with
    `extra` (the user's `--config`) laid over the generated settings; ConfigError if the result
    is not a valid config."""
    data.mkdir(parents=True, exist_ok=True)
    cfg_path = data / "cluster.yaml"
    cfg = local_cluster(nodes, base_port, str(data), sync=sync,
                        secret=_local_secret(cfg_path, data))
    if extra:
        cfg = merge_settings(cfg, extra)
    from_dict(cfg)  # refuse a bad --config before any node starts
    _write_private(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path, cfg


def _user_settings(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of settings")
    return data


def cmd_up(args: argparse.Namespace) -> int:
    from spine.supervisor import Supervisor, describe, first_clash, listeners

    data = Path(args.data).resolve()
    try:
        extra = _user_settings(args.config) if args.config else None
        cfg_path, cfg = write_local_config(data, args.nodes, args.base_port,
                                           sync=not args.no_sync, extra=extra)
    except ConfigError as e:
        print(f"spine up: {e}", file=sys.stderr)
        return 2
    clash = first_clash(listeners(cfg))
    if clash is not None:
        proto = "udp" if clash.kind == socket.SOCK_DGRAM else "tcp"
        print(f"spine up: {clash.host}:{clash.port}/{proto} ({clash.node} {clash.what}) is in"
              " use; choose another --base-port or stop what holds it", file=sys.stderr)
        return 2
    sup = Supervisor(cfg_path, [n["id"] for n in cfg["nodes"]], on_exit=args.on_exit)
    for line in describe(cfg, data, cfg_path):
        sup.say(line)
    sup.say(f"a node that exits is {_ON_EXIT_SAYS[args.on_exit]} (--on-exit); Ctrl-C stops all")
    return sup.run()


_ON_EXIT_SAYS = {"restart": "restarted", "leave": "reported and left down",
                 "stop": "the end of all of them"}


def cmd_put(args: argparse.Namespace) -> int:
    c = _client(args)
    body: dict[str, Any] = {}
    if args.tags:
        body["tags"] = [t for t in args.tags.split(",") if t]
    if args.metadata:
        body["metadata"] = json.loads(args.metadata)
    content = args.content if args.content is not None else sys.stdin.read()
    out = c.put(args.ns, args.id, content, **body) if args.id else c.create(args.ns, content,
                                                                             **body)
    return _show(args, c, out)


def _show(args: argparse.Namespace, c: Any, out: Any) -> int:
    """Keep the session token the answer carried, print the answer as JSON."""
    _save_session(args, c)
    print(json.dumps(out, indent=2))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    c = _client(args)
    out = c.get(args.ns, args.id)
    return _show(args, c, out)


def cmd_rm(args: argparse.Namespace) -> int:
    c = _client(args)
    out = c.delete(args.ns, args.id)
    return _show(args, c, out)


def cmd_search(args: argparse.Namespace) -> int:
    c = _client(args)
    body: dict[str, Any] = {"k": args.k}
    if args.tags_all:
        body["tags_all"] = args.tags_all.split(",")
    out = c.search(args.ns, args.query, **body)
    _save_session(args, c)
    for r in out["results"]:
        print(f"{r['score']:.3f}  {r['id']}  {r['record']['content'][:80]!r}")
    if out.get("partial"):
        print(f"(partial: shards {out['missing_shards']} had no answering replica)")
    return 0


def _member_urls(view: dict[str, Any], fallback: str) -> dict[str, str]:
    """node → HTTP URL of every member in a /v1/cluster view that has an address."""
    scheme = fallback.split("://", 1)[0] if "://" in fallback else "http"
    out = {m["id"]: f"{scheme}://{m['address']}" for m in view["members"]
           if m.get("address") and m["state"] != "left"}
    return out or {view["node"]: fallback}


def _node(args: argparse.Namespace, url: str) -> Any:
    """A client of one node (status and admin ask each member in turn)."""
    from spine.client import Client

    return Client([url], api_key=args.api_key or os.environ.get("SPINE_API_KEY"), timeout=3.0,
                  verify=_verify(args))


def _records(args: argparse.Namespace, url: str) -> float | None:
    """The records a node stores, from its /metrics."""
    for line in _node(args, url).text("/metrics").splitlines():
        if line.startswith("spine_records_stored "):
            return float(line.split()[1])
    return None


def cmd_status(args: argparse.Namespace) -> int:
    from spine.admin import format_status

    c = _client(args)
    view = c.request("GET", "/v1/cluster")
    shards = c.request("GET", "/v1/cluster/shards")
    records: dict[str, float | None] = {}
    for node, url in _member_urls(view, args.url.split(",")[0]).items():
        try:
            records[node] = _records(args, url)
        except Exception:
            records[node] = None
    print(format_status(view, shards, records))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from spine.admin import watch

    c = _client(args)
    out = c.request("POST", f"/v1/cluster/nodes/{args.node}/{args.action}")
    print(json.dumps(out), file=sys.stderr)
    if args.no_wait:
        return 0
    base = args.url.split(",")[0]

    def urls() -> dict[str, str]:
        return _member_urls(c.request("GET", "/v1/cluster"), base)

    ok = watch(lambda url, path: _node(args, url).request("GET", path), urls, args.node,
               args.action, timeout=args.timeout)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spine", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run one node")
    s.add_argument("--config", default=os.environ.get("SPINE_CONFIG"),
                   required="SPINE_CONFIG" not in os.environ,
                   help="cluster.yaml (or SPINE_CONFIG); SPINE_<SECTION>__<KEY> variables"
                        " override its settings")
    s.add_argument("--node", default=os.environ.get("SPINE_NODE"),
                   required="SPINE_NODE" not in os.environ, help="this node's id (or SPINE_NODE)")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback listener without API keys")
    s.add_argument("--join", action="store_true",
                   help="join a running cluster: fetch its ring from a configured peer and"
                        " stream this node's shards before serving them")
    s.set_defaults(fn=cmd_serve)

    u = sub.add_parser("up", help="run a local cluster on 127.0.0.1 in the foreground")
    u.add_argument("--nodes", type=int, default=3)
    u.add_argument("--base-port", type=int, default=8788)
    u.add_argument("--data", default="./data/local")
    u.add_argument("--no-sync", action="store_true", help="do not fsync commits (faster, unsafe)")
    u.add_argument("--config", help="a YAML file of settings laid over the generated ones"
                                    " (API keys, consistency overrides and levels, limits, ...)")
    u.add_argument("--on-exit", choices=["restart", "leave", "stop"], default="restart",
                   help="what happens when a node exits: restart it (default, with backoff),"
                        " leave it down and keep the others, or stop the whole cluster")
    u.set_defaults(fn=cmd_up)

    def client_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", default=os.environ.get("SPINE_URL", "http://127.0.0.1:8788"),
                        help="node URL(s), comma-separated")
        sp.add_argument("--api-key")
        sp.add_argument("--consistency", choices=["eventual", "session", "strong"])
        sp.add_argument("--session-file")
        sp.add_argument("--cacert", default=os.environ.get("SPINE_CACERT") or None,
                        help="CA bundle (PEM) to check an https node against"
                             " (or SPINE_CACERT; default: the system CAs)")

    c = sub.add_parser("put", help="create or replace a memory")
    c.add_argument("ns")
    c.add_argument("id", nargs="?")
    c.add_argument("--content")
    c.add_argument("--tags")
    c.add_argument("--metadata")
    client_args(c)
    c.set_defaults(fn=cmd_put)
    for name, fn in (("get", cmd_get), ("rm", cmd_rm)):
        g = sub.add_parser(name, help=f"{name} a memory")
        g.add_argument("ns")
        g.add_argument("id")
        client_args(g)
        g.set_defaults(fn=fn)
    q = sub.add_parser("search", help="semantic search")
    q.add_argument("ns")
    q.add_argument("query")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--tags-all")
    client_args(q)
    q.set_defaults(fn=cmd_search)
    st = sub.add_parser("status", help="print the cluster as this node sees it")
    client_args(st)
    st.set_defaults(fn=cmd_status)
    ad = sub.add_parser("admin", help="change the ring: join, decommission or remove a node,"
                                      " and follow the transfers to the end")
    ad.add_argument("action", choices=["join", "decommission", "remove"])
    ad.add_argument("node", help="the node id (for join: --url must be that node's own)")
    ad.add_argument("--no-wait", action="store_true", help="return once the change is asked")
    ad.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds to follow the change before giving up (default 3600)")
    client_args(ad)
    ad.set_defaults(fn=cmd_admin)

    args = p.parse_args(argv)
    from spine.client import SpineHTTPError

    try:
        rc: int = args.fn(args)
    except SpineHTTPError as e:
        print(json.dumps(e.body, indent=2), file=sys.stderr)
        return 1
    except urllib.error.URLError as e:  # unreachable, refused, or a certificate not trusted
        hint = " (pass the node's CA bundle with --cacert or SPINE_CACERT)" if isinstance(
            e.reason, ssl.SSLCertVerificationError) else ""
        print(f"spine: cannot reach {getattr(args, 'url', 'the node')}: {e.reason}{hint}",
              file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
