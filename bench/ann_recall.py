"""ANN recall and speed of Spine's HNSW index against exact numpy brute force, plus the
HashEmbedder's throughput. Prints figures; asserts nothing.

    .venv/bin/python bench/ann_recall.py                    # 100k × 384-d random unit vectors
    .venv/bin/python bench/ann_recall.py --n 20000 --data clustered --ef-search 32,64,128

`--data random` (the default) draws i.i.d. unit vectors: no structure, HNSW's worst case.
`--data clustered` draws vectors near a random `--intrinsic-dim`-dimensional subspace, closer to
what sentence embedders produce. (`--sweep` also has `blobs`: a mixture of `--clusters` unit
centres with isotropic noise of norm `--spread` around each.) Query timings are single-threaded (BLAS pinned to one thread
unless --blas-threads says otherwise); the build uses `--build-threads` hnswlib threads.

`--sweep` measures the index parameters against recall and cost, on hnswlib directly with the
settings `VectorIndex` gives it (inner product on unit vectors, seed 100, one query thread), and
writes `bench/results/ann-<timestamp>.json` after every point (a long run cut short keeps what it
measured):

    .venv/bin/python bench/ann_recall.py --sweep --sweep-n 3000 --sweep-data random,clustered
    .venv/bin/python bench/ann_recall.py --sweep --sweep-n 100000 --sweep-data random \\
        --sweep-configs 16:200,32:100 --ef-search 128,256,512,1024 --brute-n 0

For each (data, n, M, ef_construction) it builds the graph in three steps: the first n − 2t
vectors with `--head-threads` threads, then t vectors with one thread, then t with two
(t = `--tail`, at most n/10), and reports process CPU µs per insert of each step, so the one- and
two-thread figures are the marginal cost of an insert into a graph of about n. Then, per
ef_search: recall@k against exact top-k over `--queries` held-out queries drawn like the data,
and per-query CPU µs of the querying thread. Graph memory is the size of hnswlib's
`save_index` file (its in-memory layout: links and the vectors hnswlib keeps). `--brute-n` times
exact numpy search at those sizes, one thread: a contiguous matmul, the same after a gather
(`vecs[labels]`), and the gather after building `labels` from a dict (what `VectorIndex._exact`
does for an unfiltered search today).
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin_blas(threads: int) -> None:
    # Must run before numpy is imported: BLAS reads these once.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16, help="HNSW M (config index.m)")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument(
        "--ef-search", default="64,128,256,512", help="comma-separated ef values to sweep"
    )
    p.add_argument("--data", choices=("random", "clustered"), default="random")
    p.add_argument("--intrinsic-dim", type=int, default=32, help="for --data clustered")
    p.add_argument("--build-threads", type=int, default=-1, help="-1: every core")
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--texts", type=int, default=20_000, help="texts for the embedder figures")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("--sweep")
    g.add_argument("--sweep", action="store_true", help="parameter sweep to JSON (see above)")
    g.add_argument(
        "--sweep-data", default="random,clustered", help="random, clustered (a subspace), blobs"
    )
    g.add_argument("--clusters", type=int, default=100, help="blobs: mixture components")
    g.add_argument("--spread", type=float, default=1.0, help="blobs: noise norm / centre norm")
    g.add_argument("--sweep-n", default="3000", help="comma-separated index sizes")
    g.add_argument("--sweep-m", default="16,24,32")
    g.add_argument("--sweep-efc", default="64,100,200", help="ef_construction values")
    g.add_argument(
        "--sweep-configs", default="", help="M:efc pairs, e.g. 16:200,32:100 (overrides the grid)"
    )
    g.add_argument("--head-threads", type=int, default=2)
    g.add_argument("--tail", type=int, default=2000, help="vectors per timed tail step")
    g.add_argument("--brute-n", default="3000,10000,20000,50000,100000", help="0: none")
    g.add_argument("--out", default="", help="JSON path (default bench/results/ann-<ts>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    _pin_blas(args.blas_threads)
    if args.sweep:
        _sweep(args)
        return

    import time

    import numpy as np

    from spine.storage.embedders import HashEmbedder
    from spine.storage.vector_index import VectorIndex

    rng = np.random.default_rng(args.seed)
    n, dim, k = args.n, args.dim, args.k

    def unit(m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m

    def draw(rows: int, basis: np.ndarray | None) -> np.ndarray:
        if basis is None:
            return unit(rng.standard_normal((rows, dim)))
        low = rng.standard_normal((rows, basis.shape[0])) @ basis
        return unit(low + 0.1 * rng.standard_normal((rows, dim)))

    basis = rng.standard_normal((args.intrinsic_dim, dim)) if args.data == "clustered" else None
    data = draw(n, basis)
    queries = draw(args.queries, basis)
    keys = [f"m{i}" for i in range(n)]
    print(
        f"data: {n} × {dim}-d {args.data} unit vectors, {args.queries} queries, k={k}, "
        f"M={args.m}, ef_construction={args.ef_construction}, build threads="
        f"{args.build_threads if args.build_threads > 0 else os.cpu_count()}, "
        f"BLAS threads={args.blas_threads}, python {sys.version.split()[0]}, "
        f"numpy {np.__version__}"
    )

    index = VectorIndex(
        dim, m=args.m, ef_construction=args.ef_construction, exact_max=0, initial_capacity=n
    )
    t0, c0 = time.perf_counter(), time.process_time()
    index.upsert_many(keys, data)
    index.build(num_threads=args.build_threads)  # the graph, as the node's builder makes it
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"build: {build_s:.1f} s wall ({n / build_s:,.0f} vectors/s), "
        f"{build_cpu:.1f} s CPU over all threads ({n / build_cpu:,.0f} vectors per CPU-second)"
    )
    print("QPS CPU = queries per CPU-second of the querying thread (robust on a busy machine)")

    # Exact answers, and brute-force speed measured the way a node would answer one query.
    truth = np.empty((len(queries), k), dtype=np.int64)
    t0, c0 = time.perf_counter(), time.thread_time()
    for i, q in enumerate(queries):
        scores = data @ q
        top = np.argpartition(-scores, k - 1)[:k]
        truth[i] = top[np.argsort(-scores[top])]
    brute_s = (time.perf_counter() - t0) / len(queries)
    brute_cpu = (time.thread_time() - c0) / len(queries)
    print(
        f"brute force (numpy matmul + argpartition, one thread): {1 / brute_s:,.0f} QPS wall, "
        f"{1 / brute_cpu:,.0f} QPS CPU ({brute_cpu * 1e3:.2f} ms CPU per query)"
    )

    truth_sets = [set(row.tolist()) for row in truth]
    print(
        f"{'ef':>6} {'recall@' + str(k):>10} {'QPS wall':>10} {'QPS CPU':>10} "
        f"{'ms CPU':>8} {'HNSW/brute (CPU)':>17}"
    )
    for ef in (int(x) for x in args.ef_search.split(",")):
        index.set_ef_search(ef)
        index.search(queries[0], k)  # warm
        hits = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        results = [index.search(q, k) for q in queries]
        dt = (time.perf_counter() - t0) / len(queries)
        dc = (time.thread_time() - c0) / len(queries)
        for got, want in zip(results, truth_sets, strict=True):
            hits += len({int(key[1:]) for key, _ in got} & want)
        recall = hits / (k * len(queries))
        print(
            f"{ef:>6} {recall:>10.4f} {1 / dt:>10,.0f} {1 / dc:>10,.0f} {dc * 1e3:>8.3f} "
            f"{brute_cpu / dc:>16.1f}x"
        )

    # Filtered search: a broad predicate (HNSW with hnswlib's filter) and a selective one
    # (exact over the matches), on the first 50 queries, against filtered brute force.
    index.set_ef_search(int(args.ef_search.split(",")[0]))
    fq = queries[:50]
    for share in (0.5, 0.005):
        cut = int(n * share)

        def keep(key: str, cut: int = cut) -> bool:
            return int(key[1:]) < cut

        hits = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        results = [index.search(q, k, keep) for q in fq]
        dt = (time.perf_counter() - t0) / len(fq)
        dc = (time.thread_time() - c0) / len(fq)
        for q, got in zip(fq, results, strict=True):
            scores = data[:cut] @ q
            want = set(np.argpartition(-scores, k - 1)[:k].tolist())
            hits += len({int(key[1:]) for key, _ in got} & want)
        print(
            f"filtered, {share:.1%} match (ef={index.ef_search}): recall@{k} "
            f"{hits / (k * len(fq)):.4f}, {1 / dt:,.0f} QPS wall, {1 / dc:,.0f} QPS CPU "
            f"({dc * 1e3:.2f} ms CPU)"
        )

    # HashEmbedder: batches of 1,000 (the _batch endpoint's limit) and one text per call.
    words = [
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10)))
        for _ in range(5000)
    ]
    texts = [
        " ".join(words[j] for j in rng.integers(0, len(words), rng.integers(5, 25)))
        for _ in range(args.texts)
    ]
    mean_words = sum(len(t.split()) for t in texts) / len(texts)
    embedder = HashEmbedder(dim)
    embedder.embed(texts[:10])  # builds the Unicode token pattern once
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(0, len(texts), 1000):
        embedder.embed(texts[i : i + 1000])
    batch_s, batch_cpu = time.perf_counter() - t0, time.thread_time() - c0
    single = texts[:2000]
    t0, c0 = time.perf_counter(), time.thread_time()
    for t in single:
        embedder.embed([t])
    single_s, single_cpu = time.perf_counter() - t0, time.thread_time() - c0
    print(
        f"HashEmbedder(dim={dim}), {len(texts)} texts of {mean_words:.1f} words on average: "
        f"batches of 1,000: {len(texts) / batch_s:,.0f} texts/s wall, "
        f"{len(texts) / batch_cpu:,.0f} per CPU-second; one text per call: "
        f"{len(single) / single_s:,.0f} texts/s wall, "
        f"{len(single) / single_cpu:,.0f} per CPU-second"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip() and int(x) > 0]


def _sweep(args: argparse.Namespace) -> None:
    import json
    import platform
    import tempfile
    import time
    from pathlib import Path

    import hnswlib
    import numpy as np

    k, dim = args.k, args.dim
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out or Path(__file__).parent / "results" / f"ann-{stamp}.json")
    configs = (
        [tuple(int(v) for v in pair.split(":")) for pair in args.sweep_configs.split(",")]
        if args.sweep_configs
        else [(m, efc) for m in _ints(args.sweep_m) for efc in _ints(args.sweep_efc)]
    )
    report: dict[str, object] = {
        "when": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "args": vars(args),
        "note": "CPU figures are process/thread CPU time; the box may be shared (see loadavg)",
        "brute": [],
        "points": [],
    }

    def loadavg() -> float:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])

    def flush() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)

    def unit(m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m

    def dataset(kind: str, rows: int) -> np.ndarray:
        rng = np.random.default_rng(args.seed)
        if kind == "random":
            return unit(rng.standard_normal((rows, dim)))
        if kind == "blobs":  # a mixture: unit centres, isotropic spread around each
            centres = unit(rng.standard_normal((args.clusters, dim)))
            which = rng.integers(0, args.clusters, rows)
            noise = rng.standard_normal((rows, dim)).astype(np.float32)
            return unit(centres[which] + args.spread / np.sqrt(dim) * noise)
        basis = rng.standard_normal((args.intrinsic_dim, dim))
        out_rows = np.empty((rows, dim), dtype=np.float32)
        for i in range(0, rows, 20_000):  # chunks: float64 temporaries stay small
            r = min(rows, i + 20_000) - i
            low = rng.standard_normal((r, args.intrinsic_dim)) @ basis
            out_rows[i : i + r] = unit(low + 0.1 * rng.standard_normal((r, dim)))
        return out_rows

    def top_k(mat: np.ndarray, q: np.ndarray) -> np.ndarray:
        scores = mat @ q
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    # -- exact search cost, one thread --------------------------------------------------------
    for n in _ints(args.brute_n):
        mat = dataset("random", n + args.queries)
        vecs, qs = mat[:n], mat[n:]
        rng = np.random.default_rng(1)
        labels = rng.permutation(n).astype(np.int64)
        label_of = {f"m{int(i)}": int(i) for i in labels}
        row: dict[str, object] = {"n": n, "queries": len(qs)}
        for name in ("matmul", "gather", "dict_gather"):
            top_k(vecs, qs[0])
            c0 = time.thread_time()
            for q in qs:
                if name == "matmul":
                    top_k(vecs, q)
                elif name == "gather":
                    top_k(vecs[labels], q)
                else:
                    live = np.fromiter(label_of.values(), dtype=np.int64, count=len(label_of))
                    top_k(vecs[live], q)
            row[f"{name}_us"] = round((time.thread_time() - c0) / len(qs) * 1e6, 1)
        report["brute"].append(row)  # type: ignore[attr-defined]
        flush()
        print(
            f"brute n={n:>7,}: matmul {row['matmul_us']:>8} µs/query, gather "
            f"{row['gather_us']:>8}, dict+gather {row['dict_gather_us']:>8} (CPU, one thread)"
        )

    # -- the grid ---------------------------------------------------------------------------------
    efs = _ints(args.ef_search)
    print(
        f"{'data':>9} {'n':>7} {'M':>3} {'efc':>4} {'head µs':>8} {'1t µs':>7} {'2t µs':>7} "
        f"{'MiB':>6} " + " ".join(f"{'ef' + str(ef):>13}" for ef in efs) + "   (recall/µs)"
    )
    for kind in args.sweep_data.split(","):
        for n in _ints(args.sweep_n):
            mat = dataset(kind, n + args.queries)
            vecs, qs = mat[:n], mat[n:]
            truth = [set(top_k(vecs, q).tolist()) for q in qs]
            tail = min(args.tail, n // 10)
            head = n - 2 * tail
            for m, efc in configs:
                point: dict[str, object] = {
                    "data": kind, "n": n, "m": m, "ef_construction": efc,
                    "loadavg_start": loadavg(),
                }
                index = hnswlib.Index(space="ip", dim=dim)
                index.init_index(max_elements=n, M=m, ef_construction=efc, random_seed=100)
                index.set_num_threads(1)
                steps = [(0, head, args.head_threads), (head, head + tail, 1),
                         (head + tail, n, 2)]
                build = []
                for lo, hi, threads in steps:
                    t0, c0 = time.perf_counter(), time.process_time()
                    index.add_items(vecs[lo:hi], np.arange(lo, hi, dtype=np.uint64),
                                    num_threads=threads)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    build.append({
                        "rows": [lo, hi], "threads": threads,
                        "cpu_us_per_insert": round(cpu / (hi - lo) * 1e6, 1),
                        "wall_us_per_insert": round(wall / (hi - lo) * 1e6, 1),
                    })
                point["build"] = build
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "graph.hnsw"
                    index.save_index(str(path))
                    point["graph_bytes"] = path.stat().st_size
                searches = []
                for ef in efs:
                    index.set_ef(ef)
                    for q in qs[:5]:
                        index.knn_query(q[None, :], k=k, num_threads=1)
                    hits = 0
                    t0, c0 = time.perf_counter(), time.thread_time()
                    found = [index.knn_query(q[None, :], k=k, num_threads=1)[0][0] for q in qs]
                    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                    for got, want in zip(found, truth, strict=True):
                        hits += len(set(got.tolist()) & want)
                    searches.append({
                        "ef_search": ef,
                        "recall": round(hits / (k * len(qs)), 4),
                        "cpu_us_per_query": round(cpu / len(qs) * 1e6, 1),
                        "wall_us_per_query": round(wall / len(qs) * 1e6, 1),
                    })
                point["search"] = searches
                point["loadavg_end"] = loadavg()
                report["points"].append(point)  # type: ignore[attr-defined]
                flush()
                print(
                    f"{kind:>9} {n:>7} {m:>3} {efc:>4} {build[0]['cpu_us_per_insert']:>8} "
                    f"{build[1]['cpu_us_per_insert']:>7} {build[2]['cpu_us_per_insert']:>7} "
                    f"{point['graph_bytes'] / 2**20:>6.1f} "  # type: ignore[operator]
                    + " ".join(
                        f"{s['recall']:>6.3f}/{s['cpu_us_per_query']:>6.0f}" for s in searches
                    ),
                    flush=True,
                )
                del index
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
