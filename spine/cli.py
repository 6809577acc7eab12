"""`spine`: serve a node, run a local cluster, and talk to one from the shell."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from spine.commands import member_urls as _member_urls  # noqa: F401  (tests import it here)
from spine.core.config_env import merge_settings
from spine.core.errors import ConfigError


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio  # here, not at the top: `spine --help` and `spine up` never run a loop

    from spine.core.config import load
    from spine.logs import configure
    from spine.node import run_node

    cfg = load(args.config, env=os.environ)
    configure(args.node, cfg.log.level)
    _install_uvloop()
    asyncio.run(run_node(cfg, args.node, insecure=args.insecure, join=args.join))
    return 0


def _install_uvloop() -> None:
    import asyncio

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
    from spine.core.secret_policy import KNOWN_SECRETS, MIN_SECRET_CHARS

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


def _local_embedder(cfg_path: Path) -> str:
    """The embedder `spine up` runs: the one an earlier run's cluster.yaml names (its data was
    embedded with it), else the semantic `minilm` when the default install carries it, else
    `hash`. (The test harnesses build their configs from local_cluster and keep `hash`.)"""
    from spine.storage.embedders import minilm_available

    with contextlib.suppress(OSError, yaml.YAMLError):
        earlier = yaml.safe_load(cfg_path.read_text())
        if isinstance(earlier, dict):
            section = earlier.get("embedder")
            name = section.get("name", "hash") if isinstance(section, dict) else "hash"
            if isinstance(name, str):
                return name  # a cluster.yaml without the section ran the old default, hash
    return "minilm" if minilm_available() else "hash"


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
    from spine.core.config import from_dict  # server modules: not for `spine get`
    from spine.core.local_cluster import local_cluster

    data.mkdir(parents=True, exist_ok=True)
    cfg_path = data / "cluster.yaml"
    cfg = local_cluster(nodes, base_port, str(data), sync=sync,
                        secret=_local_secret(cfg_path, data))
    cfg["embedder"] = {"name": _local_embedder(cfg_path)}
    # A name of its own per data dir: clients keep session tokens per cluster name, so two local
    # clusters on one machine must not share one (a token from one is refused by the other).
    cfg["cluster"]["name"] = "local-" + hashlib.sha256(str(data).encode()).hexdigest()[:8]
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
    sup.say(f"embedder {cfg['embedder']['name']}"
            + (" (lexical: set embedder.name minilm for semantic search)"
               if cfg["embedder"]["name"] == "hash" else ""))
    sup.say(f"a node that exits is {_ON_EXIT_SAYS[args.on_exit]} (--on-exit); Ctrl-C stops all")
    return sup.run()


_ON_EXIT_SAYS = {"restart": "restarted", "leave": "reported and left down",
                 "stop": "the end of all of them"}


def _version() -> str:
    """This package's version."""
    from spine import __version__

    return __version__


_URL_FORMATS = """\
  --url URL                   repeat it or comma-separate URLs: the client fails over
                              between them (default $SPINE_URL or http://127.0.0.1:8788)
environment: SPINE_URL, SPINE_API_KEY, SPINE_CACERT, SPINE_SESSION_FILE"""
_EPILOG = """formats:
  --tags a,b                  comma-separated tags (lower case, digits, ':_.-')
  --metadata '{"k": 1}'       a JSON object
  --if-match VERSION          a record's "version" as `spine get` prints it (quotes optional)
  --fence LEASE=TOKEN         a lease's name and fencing token, e.g. task:42=7
""" + _URL_FORMATS


def _client_args(sp: argparse.ArgumentParser) -> None:
    """The flags every command that talks to a cluster takes."""
    sp.add_argument("--url", action="append", metavar="URL",
                    help="node URL; repeat or comma-separate several for failover"
                         " (default $SPINE_URL or http://127.0.0.1:8788)")
    sp.add_argument("--api-key", help="API key (default $SPINE_API_KEY)")
    sp.add_argument("--consistency", choices=["eventual", "local_session", "session",
                                              "local_strong", "strong"],
                    help="the level for this command (default: the cluster's)")
    sp.add_argument("--session-file", metavar="PATH",
                    help="where the session token is kept between commands"
                         " (default $SPINE_SESSION_FILE or ~/.spine/session)")
    sp.add_argument("--cacert", default=os.environ.get("SPINE_CACERT") or None,
                    help="CA bundle (PEM) to check an https node against"
                         " (or SPINE_CACERT; default: the system CAs)")
    sp.add_argument("--request-timeout", dest="timeout", type=float, default=10.0,
                    metavar="SECONDS", help="seconds to wait for each answer (default 10)")


def _condition_args(sp: argparse.ArgumentParser, *, create_only: bool) -> None:
    """--if-match, --fence (and for put --if-none-match): a conditional or fenced write."""
    sp.add_argument("--if-match", metavar="VERSION",
                    help="write only if the memory's current version is VERSION (its"
                         " \"version\" as `spine get` prints it); else 412 and the current one")
    if create_only:
        sp.add_argument("--if-none-match", action="store_true",
                        help="create only: refuse (412) if a live memory has this id")
    sp.add_argument("--fence", metavar="LEASE=TOKEN",
                    help="a fenced write under a lease's token (from `spine lease acquire`),"
                         " e.g. task:42=7; refused (409 fenced) once the memory has taken a"
                         " write fenced by a newer token of that lease")


_LEASE_EPILOG = """formats:
  NAME                        a lease name: letters, digits and '._:-' (≤128), e.g. task:42
  --ttl-ms N                  milliseconds, e.g. 30000; count the lease as yours for N ms from
                              when you ran the command, not from its answer
  --token T                   the fencing token `spine lease acquire` printed
""" + _URL_FORMATS


def _lease_commands(sub: Any) -> None:
    """`spine lease acquire | release | show`."""
    from spine import commands as cm

    lease = sub.add_parser("lease", help="acquire, release or show a lease (a lock with a"
                                         " fencing token, for coordinating agents)",
                           description="Leases with fencing tokens (README: Coordinating"
                                       " agents).")
    lsub = lease.add_subparsers(dest="lease_cmd", required=True)

    def parser(name: str, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = lsub.add_parser(
            name, help=help, description=help, epilog=_LEASE_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("ns", help="namespace")
        sp.add_argument("name", help="lease name, e.g. task:42")
        return sp

    a = parser("acquire", "acquire a lease (or renew it, for its holder) and print it with its"
                          " fencing token; 409 lease_held if another holder has it")
    a.add_argument("--holder", required=True, help="who holds it (an agent's name)")
    a.add_argument("--ttl-ms", required=True, type=int, metavar="N",
                   help="how long it is held unless renewed, in milliseconds")
    _client_args(a)
    a.set_defaults(fn=cm.cmd_lease_acquire)
    r = parser("release", "release a lease if --token is its current token")
    r.add_argument("--token", required=True, type=int, metavar="T",
                   help="the fencing token acquire printed")
    _client_args(r)
    r.set_defaults(fn=cm.cmd_lease_release)
    s = parser("show", "print a lease: holder (null when free), token, ttl_ms, remaining_ms")
    _client_args(s)
    s.set_defaults(fn=cm.cmd_lease_show)


def add_client_commands(sub: Any) -> None:
    """put, get, rm, history, list, search, changes, status, admin and keys."""
    from spine import commands as cm

    def parser(name: str, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help, epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        return sp

    c = parser("put", "create or replace a memory (content from --content or stdin)")
    c.add_argument("ns", help="namespace")
    c.add_argument("id", nargs="?", help="memory id (omit it to have one minted)")
    c.add_argument("--content", help="the text (default: read stdin)")
    c.add_argument("--tags", metavar="a,b", help="comma-separated tags")
    c.add_argument("--metadata", metavar="JSON", help="""a JSON object, e.g. '{"k": 1}'""")
    c.add_argument("--agent-id", help="the agent that wrote it (an agent key sets its own)")
    c.add_argument("--ttl-s", type=int, metavar="SECONDS",
                   help="expire it this many seconds from now (default: its tags' default from"
                        " lifecycle.ttl_s_by_tag, else never)")
    c.add_argument("--dedup", metavar="exact|SCORE",
                   help="create without an id unless it exists: 'exact' (same normalised text:"
                        " one memory, even under concurrent writers) or a similarity score in"
                        " [0, 1] (a near-duplicate that close is answered instead; best effort)")
    _condition_args(c, create_only=True)
    _client_args(c)
    c.set_defaults(fn=cm.cmd_put)
    for name, fn, what in (("get", cm.cmd_get, "read a memory"),
                           ("rm", cm.cmd_rm, "delete a memory"),
                           ("history", cm.cmd_history,
                            "the versions kept for a memory, newest first")):
        g = parser(name, what)
        g.add_argument("ns", help="namespace")
        g.add_argument("id", help="memory id")
        if name == "rm":
            _condition_args(g, create_only=False)
        _client_args(g)
        g.set_defaults(fn=fn)

    _lease_commands(sub)

    ls = parser("list", "list live memories, a page at a time (in id order)")
    ls.add_argument("ns", help="namespace")
    ls.add_argument("--tag", help="only memories with this tag")
    ls.add_argument("--agent-id", help="only memories written by this agent")
    ls.add_argument("--limit", type=int, default=100, help="memories per page (default 100)")
    ls.add_argument("--cursor", help="start after this id (a page's next_cursor)")
    ls.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    ls.add_argument("--json", action="store_true", help="print each page as JSON")
    _client_args(ls)
    ls.set_defaults(fn=cm.cmd_list)

    q = parser("search", "search a namespace by meaning (or by words with the hash embedder)")
    q.add_argument("ns", help="namespace")
    q.add_argument("query", help="the text to search for")
    q.add_argument("-k", type=int, default=10, help="results wanted (default 10)")
    q.add_argument("--tags-all", metavar="a,b", help="only memories with all these tags")
    q.add_argument("--tags-any", metavar="a,b", help="only memories with any of these tags")
    q.add_argument("--agent-id", help="only memories written by this agent")
    q.add_argument("--metadata", metavar="JSON",
                   help="""only memories whose metadata holds these pairs, e.g. '{"k": 1}'""")
    q.add_argument("--min-score", type=float, help="drop results scoring below this")
    q.add_argument("--mode", help="vector, keyword (BM25) or hybrid (both, fused; the default"
                                  " for text); passed to the server as given")
    q.add_argument("--recency-half-life", type=float, metavar="SECONDS",
                   help="blend recency into the score: age (from updated_at) at which it halves")
    q.add_argument("--recency-weight", type=float, metavar="W",
                   help="share of the score given to recency, 0..1 (with --recency-half-life)")
    q.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    _client_args(q)
    q.set_defaults(fn=cm.cmd_search)

    ch = parser("changes", "print a namespace's changes (writes, deletes, expiries) as JSON"
                           " lines, then the cursor to resume from on stderr")
    ch.add_argument("ns", help="namespace")
    ch.add_argument("--cursor", help="resume after this cursor (what an earlier run printed);"
                                     " default: from the beginning, every memory's latest change")
    ch.add_argument("--from-now", action="store_true",
                    help="only changes made from now on (instead of --cursor)")
    ch.add_argument("--limit", type=int, default=100,
                    help="changes per request, 1..1000 (default 100)")
    ch.add_argument("--wait-s", type=float, metavar="SECONDS",
                    help="when nothing is new, wait up to this long for a change, 0..30"
                         " (default 0; 10 with --follow)")
    ch.add_argument("--follow", action="store_true",
                    help="keep following (long-polling) until Ctrl-C, across node failures;"
                         " the cursor is printed on stderr when it stops")
    _client_args(ch)
    ch.set_defaults(fn=cm.cmd_changes)

    st = parser("status", "print the cluster as the first node that answers sees it")
    _client_args(st)
    st.set_defaults(fn=cm.cmd_status)
    ad = parser("admin", "change the ring: join, decommission or remove a node, and follow the"
                         " transfers to the end (a progress bar on a terminal)")
    ad.add_argument("action", choices=["join", "decommission", "remove"])
    ad.add_argument("node", help="the node id (for join: --url must be that node's own)")
    ad.add_argument("--no-wait", action="store_true", help="return once the change is asked")
    ad.add_argument("--timeout", dest="wait_timeout", type=float, default=3600.0,
                    help="seconds to follow the change before giving up (default 3600)")
    _client_args(ad)
    ad.set_defaults(fn=cm.cmd_admin)

    keys = sub.add_parser("keys", help="API key helpers")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    kh = ksub.add_parser("hash", help="print a key's SHA-256 (what cluster.yaml stores) and an"
                                      " auth.keys entry to paste")
    kh.add_argument("key", nargs="?", help="the secret key (default: one line of stdin, which"
                                           " keeps it out of the shell history)")
    kh.add_argument("--name", default="agent", help="the key's name (default agent)")
    kh.add_argument("--role", choices=["agent", "admin"], default="agent")
    kh.add_argument("--namespaces", metavar="a,b",
                    help="namespaces an agent key may use ('*' for all)")
    kh.set_defaults(fn=cm.cmd_keys_hash)

    m = parser("mcp", "serve Spine's tools to an MCP client (Claude Code, Claude Desktop, ...)"
                      " over stdio, or over streamable HTTP on 127.0.0.1 with --http")
    m.add_argument("--namespace", default=os.environ.get("SPINE_NAMESPACE") or None,
                   help="the namespace tools use when a call names none (or SPINE_NAMESPACE)")
    m.add_argument("--http", type=int, metavar="PORT",
                   help="serve streamable HTTP at http://127.0.0.1:PORT/mcp instead of stdio")
    _client_args(m)
    m.set_defaults(fn=_cmd_mcp)


def _cmd_mcp(args: argparse.Namespace) -> int:
    """`spine mcp`: the SDK is an optional extra, so say how to get it if it is missing."""
    from spine import commands as cm

    try:
        from spine.mcp import McpSettings, serve
    except ImportError as e:
        raise cm.UsageError(f"the MCP SDK is not installed ({e}): pip install 'spine-memory[mcp]'"
                            ) from None
    settings = McpSettings(urls=tuple(cm.urls_of(args)), api_key=cm.api_key(args),
                           namespace=args.namespace, consistency=args.consistency,
                           verify=cm.verify(args), timeout=args.timeout)
    serve(settings, http_port=args.http)
    return 0


def run(p: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and run a command; a user's mistake or an unreachable node is one line on stderr
    and exit status 1 (2 for bad arguments), never a traceback."""
    from spine.commands import UsageError, urls_of
    from spine.explain import explain

    args = p.parse_args(argv)
    try:
        rc: int = args.fn(args)
    except UsageError as e:
        print(f"spine {args.cmd}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spine {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `spine list ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141
    except Exception as e:
        try:
            urls = urls_of(args) if hasattr(args, "url") else []
        except UsageError:
            urls = []
        line = explain(e, urls)
        if line is None:
            raise
        print(f"spine {args.cmd}: {line}", file=sys.stderr)
        return 1
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spine", description=__doc__)
    p.add_argument("--version", action="version", version=f"spine {_version()}")
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

    add_client_commands(sub)

    return run(p, argv)


if __name__ == "__main__":
    sys.exit(main())
