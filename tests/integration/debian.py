"""Debian tools the integration tests drive for real (haproxy, docker-compose), installed on a
fresh machine the first time a test needs one."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

_LOCK = threading.Lock()
_PATH_EXTRA = ":/usr/sbin:/usr/bin:/sbin:/bin"


def which(command: str) -> str | None:
    """Where `command` is, looking in the sbin directories too."""
    return shutil.which(command, path=os.environ.get("PATH", "") + _PATH_EXTRA)


def ensure(command: str, package: str) -> str:
    """The path of `command`, installing the Debian `package` with apt-get first if it is missing
    (one `apt-get update` and a second try if the first install fails)."""
    with _LOCK:
        found = which(command)
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive",
               "PATH": os.environ.get("PATH", "") + _PATH_EXTRA}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=600)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False,
                           timeout=600)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                               timeout=600)
        found = which(command)
        if not found:
            raise RuntimeError(f"could not install {package} for {command}: {r.stderr[-2000:]}")
        return found
