"""Test certificates made at test time with the `openssl` command: a CA and per-node certs.

Node certificates carry IP and DNS subjectAltNames and both TLS purposes (serverAuth,
clientAuth), since a node's RPC certificate serves as both ends of a connection. Keys are P-256
(quick to make). The `openssl` binary is installed with apt-get on a machine without it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SERIAL = itertools.count(1000)


def openssl() -> str:
    """The openssl binary (Debian package `openssl`, installed when missing)."""
    found = shutil.which("openssl")
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "openssl"], check=True,
                       capture_output=True, env=env)
        found = shutil.which("openssl")
    assert found is not None, "openssl is not on PATH"
    return found


def _run(*args: str) -> None:
    r = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)} failed:\n{r.stderr}"


@dataclass(frozen=True)
class Ca:
    """A test certificate authority: its certificate and key files."""

    cert: Path
    key: Path


def make_ca(dirpath: Path, name: str = "spine-test-ca") -> Ca:
    """A self-signed CA in `dirpath` (name.pem, name.key)."""
    dirpath.mkdir(parents=True, exist_ok=True)
    cert, key = dirpath / f"{name}.pem", dirpath / f"{name}.key"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return Ca(cert, key)


def make_cert(
    ca: Ca, dirpath: Path, name: str, ips: tuple[str, ...] = ("127.0.0.1",),
    dns: tuple[str, ...] = ("localhost",),
) -> tuple[Path, Path]:
    """A certificate for `name` signed by `ca`, valid for `ips` and `dns`: (cert, key) files."""
    dirpath.mkdir(parents=True, exist_ok=True)
    cert, key, csr = dirpath / f"{name}.pem", dirpath / f"{name}.key", dirpath / f"{name}.csr"
    ext = dirpath / f"{name}.ext"
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
    ext.write_text(
        f"subjectAltName={','.join(sans)}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
         "-set_serial", str(next(_SERIAL)), "-days", "2", "-out", str(cert),
         "-extfile", str(ext))
    return cert, key
