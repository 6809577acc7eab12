"""The image's HEALTHCHECK: healthy while this node's /readyz answers 200.

The node listens on the address its cluster.yaml entry names (its container's host name), so
the check asks that name, at the port SPINE_HEALTH_PORT (default 8788)."""

import os
import socket
import sys
import urllib.request

port = int(os.environ.get("SPINE_HEALTH_PORT", "8788"))
url = f"http://{socket.gethostname()}:{port}/readyz"
try:
    with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 (our own node)
        sys.exit(0 if reply.status == 200 else 1)
except Exception as e:  # any failure is "unhealthy"; the reason goes to `docker inspect`
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
