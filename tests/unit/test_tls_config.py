"""The `tls` section: loader checks, and SSL contexts built from certificates made here."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from spine.cli import _member_urls
from spine.client import Client, tls_context
from spine.core.config import TlsSection, from_dict
from spine.core.errors import ConfigError
from spine.tls import build_contexts, rpc_client_context
from tests.tlscerts import Ca, make_ca, make_cert


def bad(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return info.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ca, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    make_cert(ca, d, "n1")
    return ca, d


def test_tls_is_off_by_default() -> None:
    tls = from_dict({}).tls
    assert tls == TlsSection()
    assert not tls.http and not tls.rpc
    assert build_contexts(tls, "n1").http is None
    assert build_contexts(tls, "n1").rpc_server is None


@pytest.mark.parametrize(
    ("tls", "field"),
    [
        ({"http": True}, "tls.cert_file"),
        ({"rpc": True, "cert_file": "c.pem"}, "tls.key_file"),
        ({"rpc": True, "cert_file": "c.pem", "key_file": "k.pem"}, "tls.ca_file"),
        ({"gossip": True, "cert_file": "c.pem", "key_file": "k.pem"}, "tls.ca_file"),
        ({"gossip": True}, "tls.cert_file"),
        ({"handshake_timeout_ms": 0}, "tls.handshake_timeout_ms"),
        ({"min_version": "1.1"}, "tls.min_version"),
        ({"http": "yes"}, "tls.http"),
        ({"enabled": True}, "tls.enabled"),
    ],
)
def test_loader_names_the_missing_or_bad_key(tls: dict[str, object], field: str) -> None:
    assert bad({"tls": tls}).field == field


def test_http_alone_needs_no_ca() -> None:
    cfg = from_dict({"tls": {"http": True, "cert_file": "c.pem", "key_file": "k.pem"}})
    assert cfg.tls.http and not cfg.tls.rpc


def test_node_placeholder_names_each_nodes_files() -> None:
    tls = TlsSection(cert_file="/certs/{node}.pem", key_file="/certs/{node}.key")
    assert tls.cert_path("n2") == "/certs/n2.pem"
    assert tls.key_path("n2") == "/certs/n2.key"


def test_contexts_from_real_certificates(pki: tuple[Ca, Path]) -> None:
    ca, d = pki
    tls = TlsSection(http=True, rpc=True, cert_file=str(d / "{node}.pem"),
                     key_file=str(d / "{node}.key"), ca_file=str(ca.cert))
    ctx = build_contexts(tls, "n1")
    assert ctx.http is not None and ctx.rpc_server is not None and ctx.rpc_client is not None
    assert ctx.http.verify_mode == ssl.CERT_NONE  # API keys, not certificates, for clients
    assert ctx.rpc_server.verify_mode == ssl.CERT_REQUIRED  # mutual TLS
    assert ctx.rpc_client.verify_mode == ssl.CERT_REQUIRED
    assert ctx.rpc_client.check_hostname
    assert ctx.gossip_server is None and ctx.gossip_client is None  # tls.gossip is off
    gossip = build_contexts(TlsSection(gossip=True, cert_file=tls.cert_file,
                                       key_file=tls.key_file, ca_file=tls.ca_file), "n1")
    assert gossip.gossip_server is not None and gossip.gossip_client is not None
    assert gossip.gossip_server.verify_mode == ssl.CERT_REQUIRED
    assert gossip.http is None and gossip.rpc_server is None
    for c in (ctx.http, ctx.rpc_server, ctx.rpc_client):
        assert c.minimum_version == ssl.TLSVersion.TLSv1_2
    tls13 = TlsSection(rpc=True, cert_file=str(d / "n1.pem"), key_file=str(d / "n1.key"),
                       ca_file=str(ca.cert), min_version="1.3", check_hostname=False)
    client = rpc_client_context(tls13, "n1")
    assert client.minimum_version == ssl.TLSVersion.TLSv1_3
    assert not client.check_hostname


def test_missing_files_fail_naming_the_key(pki: tuple[Ca, Path], tmp_path: Path) -> None:
    ca, d = pki
    good = {"cert_file": str(d / "n1.pem"), "key_file": str(d / "n1.key"),
            "ca_file": str(ca.cert)}
    for key in good:
        tls = TlsSection(rpc=True, **{**good, key: str(tmp_path / "absent.pem")})
        with pytest.raises(ConfigError) as info:
            build_contexts(tls, "n1")
        assert info.value.field == f"tls.{key}"
        assert "absent.pem" in info.value.message
    # A node whose own file the placeholder names but which does not exist.
    tls = TlsSection(http=True, cert_file=str(d / "{node}.pem"), key_file=str(d / "{node}.key"))
    with pytest.raises(ConfigError) as info:
        build_contexts(tls, "n9")
    assert info.value.field == "tls.cert_file" and "n9.pem" in info.value.message


def test_a_key_that_does_not_match_its_certificate_is_refused(
    pki: tuple[Ca, Path], tmp_path: Path
) -> None:
    ca, d = pki
    make_cert(ca, tmp_path, "other")
    tls = TlsSection(http=True, cert_file=str(d / "n1.pem"), key_file=str(tmp_path / "other.key"))
    with pytest.raises(ConfigError) as info:
        build_contexts(tls, "n1")
    assert info.value.field == "tls.cert_file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = TlsSection(rpc=True, cert_file=str(d / "n1.pem"), key_file=str(d / "n1.key"),
                     ca_file=str(garbage))
    with pytest.raises(ConfigError) as info:
        build_contexts(tls, "n1")
    assert info.value.field == "tls.ca_file"


def test_client_verify_option(pki: tuple[Ca, Path]) -> None:
    ca, _ = pki
    strict = tls_context(True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    bundle = tls_context(str(ca.cert))
    assert bundle.verify_mode == ssl.CERT_REQUIRED and bundle.check_hostname
    assert any(c["subject"] == ((("commonName", "spine-test-ca"),),)
               for c in bundle.get_ca_certs())
    lax = tls_context(False)
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname
    assert Client("https://127.0.0.1:1", verify=str(ca.cert))._ssl.get_ca_certs() == \
        bundle.get_ca_certs()


def test_cli_member_urls_keep_the_scheme_of_the_url_given() -> None:
    view = {"node": "n1", "members": [{"id": "n1", "address": "10.0.0.1:8788", "state": "active"},
                                      {"id": "n2", "address": "10.0.0.2:8788", "state": "left"}]}
    assert _member_urls(view, "https://10.0.0.1:8788") == {"n1": "https://10.0.0.1:8788"}
    assert _member_urls(view, "http://10.0.0.1:8788") == {"n1": "http://10.0.0.1:8788"}
