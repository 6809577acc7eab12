"""The CLI's parsing and formatting: tags, metadata, URLs, search bodies, key entries, help,
the one-line error accounts, and the admin progress bar only on a terminal."""

from __future__ import annotations

import argparse
import io
import json
import urllib.error
from typing import Any

import pytest
import yaml

from spine import commands as cm
from spine.admin import watch
from spine.cli import main
from spine.client import NotFound, SpineHTTPError, Unreachable
from spine.core.config import from_dict, hash_key
from spine.core.errors import InvalidInput
from spine.core.local_cluster import local_cluster
from spine.explain import explain, http_error


def test_urls_repeated_and_comma_separated() -> None:
    assert cm.split_urls(["http://a:1,http://b:2", "https://c:3/"]) == [
        "http://a:1", "http://b:2", "https://c:3"]
    assert cm.split_urls(None, "http://env:9") == ["http://env:9"]
    assert cm.split_urls(None) == ["http://127.0.0.1:8788"]
    with pytest.raises(cm.UsageError, match="http://"):
        cm.split_urls(["localhost:8788"])
    with pytest.raises(cm.UsageError, match="at least one"):
        cm.split_urls([" , "])


def test_tags_and_metadata() -> None:
    assert cm.split_tags("a, b,,c") == ["a", "b", "c"]
    assert cm.split_tags(None) is None
    with pytest.raises(cm.UsageError, match="--tags a,b"):
        cm.split_tags(",")
    assert cm.parse_metadata('{"k": 1}') == {"k": 1}
    assert cm.parse_metadata(None) is None
    with pytest.raises(cm.UsageError, match="not valid JSON"):
        cm.parse_metadata("{bad")
    with pytest.raises(cm.UsageError, match="JSON object"):
        cm.parse_metadata("[1, 2]")


def _ns(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"k": 10, "tags_all": None, "tags_any": None, "metadata": None,
                            "agent_id": None, "min_score": None, "mode": None, "tags": None}
    return argparse.Namespace(**{**base, **kw})


def test_search_body_has_every_filter_given_and_nothing_else() -> None:
    assert cm.search_fields(_ns()) == {"k": 10}
    body = cm.search_fields(_ns(k=3, tags_all="a,b", tags_any="c", metadata='{"p": 2}',
                                agent_id="bot", min_score=0.25, mode="hybrid"))
    assert body == {"k": 3, "tags_all": ["a", "b"], "tags_any": ["c"], "metadata": {"p": 2},
                    "agent_id": "bot", "min_score": 0.25, "mode": "hybrid"}
    with pytest.raises(cm.UsageError, match="--tags-any"):
        cm.search_fields(_ns(tags_any=","))


def test_write_fields() -> None:
    assert cm.write_fields(_ns()) == {}
    assert cm.write_fields(_ns(tags="x,y", metadata='{"a": [1]}', agent_id="me")) == {
        "tags": ["x", "y"], "metadata": {"a": [1]}, "agent_id": "me"}


def test_keys_hash_prints_the_digest_and_an_entry_the_loader_accepts(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "hash", "s3cret-key", "--name", "bot", "--namespaces", "team-a,b"]) == 0
    out = capsys.readouterr().out
    digest = out.splitlines()[0]
    assert digest == hash_key("s3cret-key")
    entry = yaml.safe_load(out.split("\n", 2)[2])
    assert entry == [{"name": "bot", "sha256": digest, "role": "agent",
                      "namespaces": ["team-a", "b"]}]
    cfg = local_cluster(1, 8788, "/tmp/x")
    cfg["auth"] = {"keys": entry}
    assert from_dict(cfg).auth.keys[0].name == "bot"


def test_keys_hash_reads_stdin_and_refuses_an_agent_key_without_namespaces(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert main(["keys", "hash", "--role", "admin"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == hash_key("from-stdin")
    assert "namespaces" not in out
    assert main(["keys", "hash", "k"]) == 2
    assert "--namespaces" in capsys.readouterr().err


def test_help_says_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("put", "search"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "--tags a,b" in out or "--tags-all a,b" in out
        assert """'{"k": 1}'""" in out
        assert "comma-separate" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("spine ")


def test_user_errors_are_one_line_and_a_status(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Any) -> None:
    sess = ["--session-file", str(tmp_path / "s")]
    assert main(["put", "ns", "x", "--content", "c", "--metadata", "{bad", *sess]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metadata" in err
    assert main(["get", "ns", "x", "--url", "localhost:1", *sess]) == 2
    assert "http://" in capsys.readouterr().err


def test_explain_names_the_field_status_and_hint() -> None:
    body = {"error": {"code": "invalid", "message": "namespace must match", "field": "namespace"}}
    assert http_error(400, body) == "400 invalid: namespace must match (field: namespace)"
    assert "SPINE_API_KEY" in http_error(401, {"error": {"code": "unauthorized",
                                                         "message": "no key"}})
    assert http_error(502, "Bad Gateway") == "502 Bad Gateway"
    nf = NotFound(404, {"error": {"code": "not_found", "message": "no memory", "field": "id"}})
    assert explain(nf) == "404 not_found: no memory (field: id)"
    assert explain(SpineHTTPError(503, {"error": {"code": "x", "message": "m"}})) == "503 x: m"
    down = Unreachable(["http://a:1"], ConnectionRefusedError(111, "Connection refused"))
    assert "cannot reach http://a:1" in (explain(down) or "")
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert explain(refused, ["http://b:2"]) == (
        "cannot reach http://b:2: [Errno 111] Connection refused")
    assert "timed out" in (explain(TimeoutError("timed out"), ["http://b:2"]) or "")
    assert explain(InvalidInput("bad", field="k")) == "invalid: bad (field: k)"
    assert explain(KeyError("a bug")) is None  # a bug is not a user error: it raises


def test_explain_hints_at_cacert_for_an_untrusted_certificate() -> None:
    import ssl

    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate"
                                            " verify failed")
    line = explain(urllib.error.URLError(cause), ["https://a:1"])
    assert line is not None and "--cacert" in line


def _views(changing: bool, state: str) -> Any:
    def get(url: str, path: str) -> Any:
        if path == "/v1/cluster/shards":
            return {"transfers": {"shards": 2, "copied": 1}, "ring": {"changing": changing}}
        return {"members": [{"id": "n4", "state": state}]}
    return get


@pytest.mark.parametrize("bar", [True, False])
def test_admin_progress_bar_only_when_asked(bar: bool) -> None:
    out = io.StringIO()
    ok = watch(_views(False, "left"), lambda: {"n1": "http://a"}, "n4", "decommission",
               timeout=5, out=out, interval=0, bar=bar)
    assert ok
    text = out.getvalue()
    assert ("\r[" in text) is bar and ("[" in text) is bar
    assert "1/2 shards" in text  # a log still shows the progress, one line per change
    assert text.endswith("n4 is left\n")


def test_list_prints_one_line_per_item_and_the_next_cursor(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any) -> None:
    pages = {None: {"items": [{"id": "a", "tags": ["t"], "content": "hello"}],
                    "next_cursor": "a"},
             "a": {"items": [{"id": "b", "tags": [], "content": "world"}], "next_cursor": None}}
    seen: list[dict[str, Any]] = []

    class Fake:
        session = None

        def list(self, ns: str, **params: Any) -> Any:
            seen.append(params)
            return pages[params.get("cursor")]

    monkeypatch.setattr(cm, "client", lambda args: Fake())
    sess = ["--session-file", str(tmp_path / "s")]
    assert main(["list", "ns", "--tag", "t", "--limit", "1", *sess]) == 0
    cap = capsys.readouterr()
    assert cap.out == "a  [t]  'hello'\n" and "--cursor a" in cap.err
    assert seen == [{"tag": "t", "limit": 1}]
    assert main(["list", "ns", "--all", "--json", *sess]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["items"][0]["id"] for line in lines] == ["a", "b"]


def test_client_commands_need_none_of_the_server_modules(tmp_path: Any) -> None:
    """A client-only install (`pip install spine-memory`) has no numpy, aiohttp or lmdb: the
    CLI's client commands and `spine mcp` must not import them."""
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "for m in ('numpy', 'aiohttp', 'lmdb', 'hnswlib', 'orjson', 'structlog', 'xxhash',"
        " 'sortedcontainers', 'uvloop'):\n"
        "    sys.modules[m] = None\n"
        "from spine.cli import main\n"
        "import spine.mcp\n"
        "sys.exit(main(sys.argv[1:]))\n")
    sess = ["--session-file", str(tmp_path / "s")]
    for argv, rc in ((["get", "ns", "x", "--url", "http://127.0.0.1:1", *sess], 1),
                     (["keys", "hash", "k", "--role", "admin"], 0)):
        p = subprocess.run([sys.executable, "-c", blocker, *argv], capture_output=True,
                           text=True, timeout=60, check=False)
        assert p.returncode == rc and "Traceback" not in p.stderr, p.stderr
