"""ANN recall and speed of Spine's HNSW index against exact numpy brute force, plus the
HashEmbedder's throughput. Prints figures; asserts nothing.

    .venv/bin/python bench/ann_recall.py                    # 100k × 384-d random unit vectors
    .venv/bin/python bench/ann_recall.py --n 20000 --data clustered --ef-search 32,64,128

`--data random` (the default) draws i.i.d. unit vectors: no structure, HNSW's worst case.
`--data clustered` draws vectors near a random `--intrinsic-dim`-dimensional subspace, closer to
what sentence embedders produce. Query timings are single-threaded (BLAS pinned to one thread
unless --blas-threads says otherwise); the build uses `--build-threads` hnswlib threads.
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    _pin_blas(args.blas_threads)

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
    index.upsert_many(keys, data, num_threads=args.build_threads)
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


if __name__ == "__main__":
    main()
