"""One harness for clusters of real Spine processes, shared by `tests/integration` and
`jepsen_style` (both run from the repository root, so `tests.harness` imports in each).

- `wait`: polling a condition against a deadline (`wait_until`), never a bare sleep;
- `ports`: a free base port for N nodes (HTTP, RPC, gossip TCP and UDP), below the ephemeral
  range and off the ports `spine up` and the benchmarks use;
- `http_client`: one plain HTTP request (`Reply`) and the Prometheus text parser;
- `cluster`: `ProcessCluster`, N `python -m spine serve` processes sharing one cluster.yaml,
  started, signalled, reaped and watched; `LocalCluster` (integration tests) and
  `JepsenCluster` (the fault harness) specialise it.
"""
