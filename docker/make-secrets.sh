#!/bin/sh
# Creates ./secrets/cluster_secret (random) and ./secrets/api_keys.yaml with one admin key,
# printing the key once: keep it, only its SHA-256 is stored. Leaves existing files alone.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
umask 022  # the node runs as uid 10001 and must read the bind-mounted secrets
if [ ! -f secrets/cluster_secret ]; then
  python3 -c 'import secrets; print(secrets.token_hex(32))' > secrets/cluster_secret
  echo "wrote secrets/cluster_secret"
fi
if [ ! -f secrets/api_keys.yaml ]; then
  key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
  digest=$(printf %s "$key" | python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  printf -- '- {name: admin, role: admin, sha256: "%s"}\n' "$digest" > secrets/api_keys.yaml
  echo "wrote secrets/api_keys.yaml; the admin API key (shown once): $key"
fi
