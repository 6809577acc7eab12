"""The `spine` commands that talk to a running cluster: put, get, rm, list, history, search,
changes, lease, status, admin, and `keys hash` (which talks to nobody).

Every command builds one `spine.client.Client` over the URLs given (the client fails over
between them) and keeps the session token it ends with. Parsing of the user's text (tags,
metadata JSON, URLs) lives in small pure functions that raise `UsageError`, so `spine.cli`
reports a mistake as one line and the unit tests check them without a cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

DEFAULT_URL = "http://127.0.0.1:8788"


class UsageError(Exception):
    """The user's arguments cannot be used as given (the message says which and why)."""


# ------------------------------------------------------------------ parsing the user's text


def split_urls(values: Sequence[str] | None, env: str | None = None) -> list[str]:
    """Node URLs from repeated and comma-separated --url values, else SPINE_URL, else local."""
    raw = list(values or []) or [env or DEFAULT_URL]
    urls = [u.strip().rstrip("/") for v in raw for u in v.split(",") if u.strip()]
    if not urls:
        raise UsageError("--url: give at least one node URL, e.g. http://127.0.0.1:8788")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UsageError(f"--url: {u!r} must start with http:// or https://")
    return urls


def split_tags(text: str | None, flag: str = "--tags") -> list[str] | None:
    """`a,b` → ["a", "b"] (blanks dropped); None when not given."""
    if text is None:
        return None
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if not tags:
        raise UsageError(f"{flag}: give comma-separated tags, e.g. {flag} a,b")
    return tags


def parse_metadata(text: str | None, flag: str = "--metadata") -> dict[str, Any] | None:
    """A JSON object from the command line; None when not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{flag}: not valid JSON ({e}); e.g. {flag} '{{\"k\": 1}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: must be a JSON object, e.g. {flag} '{{\"k\": 1}}'")
    return value


def write_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The optional body fields of `put` (tags, metadata, agent_id, ttl_s) that were given."""
    fields: dict[str, Any] = {}
    tags = split_tags(args.tags)
    if tags is not None:
        fields["tags"] = tags
    meta = parse_metadata(args.metadata)
    if meta is not None:
        fields["metadata"] = meta
    if args.agent_id:
        fields["agent_id"] = args.agent_id
    ttl_s = getattr(args, "ttl_s", None)
    if ttl_s is not None:
        if ttl_s <= 0:
            raise UsageError(f"--ttl-s: {ttl_s} must be a positive number of seconds,"
                             " e.g. --ttl-s 3600")
        fields["ttl_s"] = ttl_s
    return fields


def parse_fence(text: str, flag: str = "--fence") -> tuple[str, int]:
    """`name=token` → (name, token), checked as the server checks Spine-Fence."""
    from spine.core.conditions import parse_fence as server_parse
    from spine.core.errors import InvalidInput

    try:
        fence = server_parse(text)
    except InvalidInput as e:
        raise UsageError(f"{flag}: {e.message}; give LEASE=TOKEN, e.g. {flag} task:42=7"
                         ) from None
    return fence.lease, fence.token


def parse_if_match(text: str, flag: str = "--if-match") -> str:
    """A version for If-Match: bare or quoted as an ETag ("..."), as `spine get` prints it."""
    from spine.client.calls import if_match_value

    try:
        return if_match_value(text)[1:-1]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a version; give a record's \"version\" as"
                         " `spine get` prints it") from None


def condition_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The client keywords of --if-match, --if-none-match and --fence that were given."""
    out: dict[str, Any] = {}
    if getattr(args, "if_match", None) is not None:
        out["if_match"] = parse_if_match(args.if_match)
    if getattr(args, "if_none_match", False):
        out["if_none_match"] = True
    if getattr(args, "fence", None) is not None:
        out["fence"] = parse_fence(args.fence)
    return out


def check_ttl(ttl_ms: int) -> int:
    """A lease's ttl_ms: a positive number of milliseconds."""
    if ttl_ms <= 0:
        raise UsageError(f"--ttl-ms: {ttl_ms} must be a positive number of milliseconds,"
                         " e.g. --ttl-ms 30000")
    return ttl_ms


def search_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The search body (without the query) from `search`'s flags."""
    body: dict[str, Any] = {"k": args.k}
    for name in ("tags_all", "tags_any"):
        tags = split_tags(getattr(args, name), "--" + name.replace("_", "-"))
        if tags is not None:
            body[name] = tags
    meta = parse_metadata(args.metadata)
    if meta is not None:
        body["metadata"] = meta
    if args.agent_id:
        body["agent_id"] = args.agent_id
    if args.min_score is not None:
        body["min_score"] = args.min_score
    if args.mode:
        body["mode"] = args.mode
    half_life = getattr(args, "recency_half_life", None)
    weight = getattr(args, "recency_weight", None)
    if half_life is not None or weight is not None:
        if half_life is None or weight is None:
            raise UsageError("--recency-half-life and --recency-weight go together")
        body["recency"] = {"half_life_s": half_life, "weight": weight}
    return body


def key_entry(digest: str, name: str, role: str, namespaces: Sequence[str]) -> str:
    """A ready-to-paste `auth.keys` item for cluster.yaml."""
    item: dict[str, Any] = {"name": name, "sha256": digest, "role": role}
    if role == "agent":
        item["namespaces"] = list(namespaces)
    return yaml.safe_dump([item], sort_keys=False)


# ------------------------------------------------------------------ the client and its token


def urls_of(args: argparse.Namespace) -> list[str]:
    """The node URLs the command talks to."""
    return split_urls(args.url, os.environ.get("SPINE_URL"))


def session_file(args: argparse.Namespace) -> Path:
    """Where the session token is kept between commands."""
    return Path(args.session_file or os.environ.get("SPINE_SESSION_FILE")
                or Path.home() / ".spine" / "session")


def verify(args: argparse.Namespace) -> bool | str:
    """How https URLs are checked: against --cacert / SPINE_CACERT, else the system CAs."""
    cacert: str | None = args.cacert
    return cacert or True


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else SPINE_API_KEY."""
    key: str | None = args.api_key or os.environ.get("SPINE_API_KEY")
    return key


def client(args: argparse.Namespace) -> Any:
    """A client over every --url, carrying the token the last command saved for this cluster
    (tokens are kept per cluster name, so one cluster's never reaches another)."""
    from spine.client import Client, TokenStore

    c = Client(urls_of(args), api_key=api_key(args), consistency=args.consistency,
               verify=verify(args), timeout=args.timeout)
    c.load_session(TokenStore(session_file(args)))
    return c


def save_session(args: argparse.Namespace, c: Any) -> None:
    """Keep the session token the client ends with (read-your-writes for the next command)."""
    from spine.client import TokenStore

    if c.session:
        c.save_session(TokenStore(session_file(args)))


def show(args: argparse.Namespace, c: Any, out: Any) -> int:
    """Keep the session token the answer carried, print the answer as JSON."""
    save_session(args, c)
    print(json.dumps(out, indent=2))
    return 0


# ------------------------------------------------------------------ memories


def precondition_failed(args: argparse.Namespace, e: Any) -> int:
    """A 412 as one line that also names the key's current version (what to retry with)."""
    from spine.explain import explain

    now = e.current if e.current is not None else "none (no live record)"
    print(f"spine {args.cmd}: {explain(e)}; current version: {now}", file=sys.stderr)
    return 1


def parse_dedup(text: str | None) -> str | float | None:
    """`--dedup exact|SCORE` (DESIGN §13): "exact", a score in [0, 1], or None when not given."""
    if text is None:
        return None
    if text.strip().lower() == "exact":
        return "exact"
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= 1.0:
        raise UsageError(f"--dedup: {text!r} is not 'exact' or a similarity score in [0, 1],"
                         " e.g. --dedup exact or --dedup 0.9")
    return score


def cmd_put(args: argparse.Namespace) -> int:
    """Create or replace a memory (conditional with --if-match / --if-none-match, fenced with
    --fence)."""
    from spine.client import PreconditionFailed

    fields = write_fields(args)
    cond = condition_fields(args)
    if cond and not args.id:
        raise UsageError("--if-match, --if-none-match and --fence need the memory id")
    dedup = parse_dedup(getattr(args, "dedup", None))
    if dedup is not None and args.id:
        raise UsageError("--dedup chooses the id (exact derives it from the text): omit the id")
    content = args.content if args.content is not None else sys.stdin.read()
    c = client(args)
    try:
        out = (c.put(args.ns, args.id, content, **cond, **fields) if args.id
               else c.create(args.ns, content, dedup=dedup, **fields))
    except PreconditionFailed as e:
        return precondition_failed(args, e)
    return show(args, c, out)


def cmd_get(args: argparse.Namespace) -> int:
    """Read a memory."""
    c = client(args)
    return show(args, c, c.get(args.ns, args.id))


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete a memory (conditional with --if-match, fenced with --fence)."""
    from spine.client import PreconditionFailed

    cond = condition_fields(args)
    c = client(args)
    try:
        out = c.delete(args.ns, args.id, **cond)
    except PreconditionFailed as e:
        return precondition_failed(args, e)
    return show(args, c, out)


def cmd_history(args: argparse.Namespace) -> int:
    """The versions kept for a memory, newest first."""
    c = client(args)
    return show(args, c, c.history(args.ns, args.id))


def format_item(rec: dict[str, Any], width: int = 80) -> str:
    """One line of `spine list`: id, tags, the start of the content."""
    tags = ",".join(rec.get("tags") or []) or "-"
    return f"{rec['id']}  [{tags}]  {rec.get('content', '')[:width]!r}"


def cmd_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """One page of live memories (or every page with --all), as lines or JSON."""
    out = out or sys.stdout
    c = client(args)
    params = {k: v for k, v in (("tag", args.tag), ("agent_id", args.agent_id),
                                ("limit", args.limit)) if v is not None}
    cursor = args.cursor
    while True:
        page = c.list(args.ns, **params, **({"cursor": cursor} if cursor else {}))
        if args.json:
            print(json.dumps(page), file=out)
        else:
            for rec in page["items"]:
                print(format_item(rec), file=out)
        if page.get("partial"):
            print(f"(partial: shards {page.get('missing_shards')} had no answering replica)",
                  file=sys.stderr)
        cursor = page.get("next_cursor")
        if not cursor or not args.all:
            break
    if cursor and not args.json:
        print(f"(more: --cursor {cursor}, or --all)", file=sys.stderr)
    save_session(args, c)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search a namespace; one line per hit (or the JSON answer with --json)."""
    body = search_fields(args)
    c = client(args)
    out = c.search(args.ns, args.query, **body)
    save_session(args, c)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in out["results"]:
        print(f"{r['score']:.3f}  {r['id']}  {r['record']['content'][:80]!r}")
    if out.get("partial"):
        print(f"(partial: shards {out['missing_shards']} had no answering replica)")
    return 0


def cmd_changes(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The change feed as JSON lines, one change each: one request, or with --follow every
    change until Ctrl-C (a node down or answering 503 is a line on stderr and another poll, at
    another node, with the last cursor). The cursor to resume from goes to stderr at the end."""
    from spine.explain import explain

    out = out or sys.stdout
    if args.cursor and args.from_now:
        raise UsageError("--cursor and --from-now: give one (a cursor already says where)")
    c = client(args)
    if not args.follow:
        page = c.changes(args.ns, args.cursor, from_now=args.from_now, limit=args.limit,
                         wait_s=args.wait_s or 0)
        for change in page.items:
            print(json.dumps(change.public()), file=out)
        print(f"cursor: {page.cursor}", file=sys.stderr)
        return 0

    def retrying(err: BaseException, wait: float) -> None:
        print(f"spine {args.cmd}: {explain(err, urls_of(args)) or err}; polling again in"
              f" {wait:.1f} s", file=sys.stderr)

    feed = c.follow(args.ns, args.cursor, from_now=args.from_now, limit=args.limit,
                    wait_s=10 if args.wait_s is None else args.wait_s, on_retry=retrying)
    try:
        for change in feed:
            print(json.dumps(change.public()), file=out, flush=True)
    except KeyboardInterrupt:
        if feed.cursor:
            print(f"cursor: {feed.cursor}", file=sys.stderr)
        return 130
    return 0  # not reached: the feed never ends


# ------------------------------------------------------------------ leases


def cmd_lease_acquire(args: argparse.Namespace) -> int:
    """Acquire (or, by its holder, renew) a lease; prints it, with the fencing token. Held by
    someone else: one line naming the holder and the time left, status 1."""
    from spine.client import LeaseHeld
    from spine.explain import explain

    ttl_ms = check_ttl(args.ttl_ms)
    c = client(args)
    try:
        lease = c.acquire_lease(args.ns, args.name, args.holder, ttl_ms)
    except LeaseHeld as e:
        left = f"; free in at most {e.remaining_ms} ms" if e.remaining_ms is not None else ""
        print(f"spine {args.cmd}: {explain(e)}{left}", file=sys.stderr)
        return 1
    return show(args, c, lease.public())


def cmd_lease_release(args: argparse.Namespace) -> int:
    """Release a lease if --token is its current token."""
    c = client(args)
    return show(args, c, c.release_lease(args.ns, args.name, args.token).public())


def cmd_lease_show(args: argparse.Namespace) -> int:
    """Print a lease (holder null when free)."""
    c = client(args)
    return show(args, c, c.get_lease(args.ns, args.name).public())


# ------------------------------------------------------------------ keys


def cmd_keys_hash(args: argparse.Namespace) -> int:
    """Print an API key's stored SHA-256 and an auth.keys entry to paste into cluster.yaml."""
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise UsageError("keys hash: give the key as an argument or on stdin")
    namespaces = split_tags(args.namespaces, "--namespaces") or []
    if args.role == "agent" and not namespaces:
        raise UsageError("keys hash: an agent key needs --namespaces (e.g. team-a,shared, or '*')")
    digest = hashlib.sha256(key.encode()).hexdigest()  # spine.core.config.hash_key (a test
    # checks they agree), without importing the server's modules into a client-only install
    print(digest)
    print()
    print("# auth.keys entry for cluster.yaml:")
    print(key_entry(digest, args.name, args.role, namespaces), end="")
    return 0


# ------------------------------------------------------------------ cluster


def member_urls(view: dict[str, Any], fallback: str) -> dict[str, str]:
    """node → HTTP URL of every member in a /v1/cluster view that has an address."""
    scheme = fallback.split("://", 1)[0] if "://" in fallback else "http"
    out = {m["id"]: f"{scheme}://{m['address']}" for m in view["members"]
           if m.get("address") and m["state"] != "left"}
    return out or {view["node"]: fallback}


def node_client(args: argparse.Namespace, url: str) -> Any:
    """A client of one node (status and admin ask each member in turn)."""
    from spine.client import Client

    return Client([url], api_key=api_key(args), timeout=min(args.timeout, 3.0),
                  verify=verify(args))


def _records(args: argparse.Namespace, url: str) -> float | None:
    """The records a node stores, from its /metrics."""
    with node_client(args, url) as c:
        text: str = c.text("/metrics")
    for line in text.splitlines():
        if line.startswith("spine_records_stored "):
            return float(line.split()[1])
    return None


def cmd_status(args: argparse.Namespace) -> int:
    """Print the cluster as the first node that answers sees it."""
    from spine.admin import format_status

    c = client(args)
    view = c.request("GET", "/v1/cluster")
    shards = c.request("GET", "/v1/cluster/shards")
    records: dict[str, float | None] = {}
    for node, url in member_urls(view, urls_of(args)[0]).items():
        try:
            records[node] = _records(args, url)
        except Exception:  # a member down: its row shows '?' records
            records[node] = None
    print(format_status(view, shards, records))
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    """Ask for a ring change, then follow its transfers (a bar only on a terminal)."""
    from spine.admin import watch

    c = client(args)
    out = c.request("POST", f"/v1/cluster/nodes/{args.node}/{args.action}")
    print(json.dumps(out), file=sys.stderr)
    if args.no_wait:
        return 0
    base = urls_of(args)[0]

    def urls() -> dict[str, str]:
        return member_urls(c.request("GET", "/v1/cluster"), base)

    nodes: dict[str, Any] = {}  # one pooled client per member, reused by every poll

    def get(url: str, path: str) -> Any:
        if url not in nodes:
            nodes[url] = node_client(args, url)
        return nodes[url].request("GET", path)

    try:
        ok = watch(get, urls, args.node, args.action, timeout=args.wait_timeout,
                   bar=sys.stderr.isatty())
    finally:
        for n in nodes.values():
            n.close()
    return 0 if ok else 1
