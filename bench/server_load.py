"""Load test of `ragkit serve` on loopback: 50 concurrent clients × 20 `/v1/retrieve` requests, and 8
concurrent streaming chat requests (all must complete, none mixed up), then a fault phase: while 50
clients retrieve, 10 streaming clients disconnect at random points; then 20 chats must all complete.

The server is the real `ragkit serve` in its own process; clients are threads in this process with
keep-alive connections. Peer: the same searches as in-process `Index.search` calls (no HTTP), so
the table shows what the server adds. Streams are checked against the same questions answered one
at a time beforehand (greedy decoding: the texts must be equal).

usage: python bench/server_load.py [--index indexes/pydocs] [--clients 50] [--requests 20] [--streams 8]
                                   [--faults-only]   (run only the fault phase; other figures are kept)
Threads: the server decodes on 1 torch thread and runs prefill on 2 (ragkit's policy); generation is
serialised by the server, retrieval runs concurrently. Writes bench/results/server_load.json.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, environment, table, write_results  # noqa: E402

QUERIES = ["how do I read a file line by line", "sort a list of dictionaries by a key", "what is a generator",
           "run a shell command and capture output", "the with statement", "parse command line arguments",
           "regular expression groups", "json encode a dataclass", "thread pool executor", "format a date",
           "open a zip archive", "compare floating point numbers", "default dictionary values",
           "read environment variables", "temporary directory", "decorators with arguments",
           "exception chaining", "async await coroutine", "pickle security", "hash a password"]
CHAT = ["How do I read a text file line by line?", "What does the assert statement do?",
        "How can I sort a list of dictionaries by a key?", "What is a generator expression?",
        "How do I run a shell command and capture its output?", "What does the with statement do?",
        "How do I parse command line arguments?", "What is a decorator?"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, port: int, max_tokens: int) -> subprocess.Popen:
    config = Path(tempfile.mkdtemp()) / "pipeline.yaml"
    config.write_text(f"index: {index}\nretrieval: {{k: 3}}\nserver: {{max_tokens: {max_tokens}}}\n")
    ragkit = str(Path(sys.executable).with_name("ragkit"))
    proc = subprocess.Popen([ragkit, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT)
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("ragkit serve did not start") from None
            time.sleep(0.5)


def retrieve_load(port: int, clients: int, requests: int, k: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait()
        for r in range(requests):
            body = json.dumps({"query": QUERIES[(c + r) % len(QUERIES)], "k": k})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/retrieve", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                ok = resp.status == 200 and len(data["data"]) == k
                dt = time.perf_counter() - t0
                with lock:
                    (latencies.append(dt) if ok else errors.append(f"HTTP {resp.status}"))
            except Exception as e:  # noqa: BLE001 - counted as an error
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests_per_client": requests, "ok": len(latencies), "errors": len(errors),
            "error_examples": errors[:5], "p50_ms": round(1000 * pct(latencies, 0.5), 1),
            "p95_ms": round(1000 * pct(latencies, 0.95), 1), "max_ms": round(1000 * max(latencies), 1),
            "requests_per_s": round(len(latencies) / wall, 1), "wall_s": round(wall, 1)}


def chat(port: int, question: str, max_tokens: int, stream: bool) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "ragkit", "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "stream": stream})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if not stream:
        data = json.loads(resp.read())
        return {"text": data["choices"][0]["message"]["content"], "total_s": time.perf_counter() - t0,
                "sources": [s["chunk_id"] for s in data["ragkit"]["sources"]]}
    text, first, sources, done = "", None, [], False
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            break
        event = json.loads(payload)
        if "error" in event:
            raise RuntimeError(event["error"]["message"])
        delta = event["choices"][0].get("delta", {}).get("content") if event.get("choices") else None
        if delta:
            first = first or time.perf_counter() - t0
            text += delta
        if "ragkit" in event:
            sources = [s["chunk_id"] for s in event["ragkit"]["sources"]]
    conn.close()
    return {"text": text, "first_s": first, "total_s": time.perf_counter() - t0, "sources": sources, "done": done}


def drop_stream(port: int, question: str, max_tokens: int, after_events: int) -> dict:
    """A streaming chat whose client reads `after_events` events, then disconnects."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "ragkit", "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        return {"error": f"HTTP {resp.status}"}
    seen = 0
    while seen < after_events:
        line = resp.readline()
        if not line:
            break
        seen += line.startswith(b"data:")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    return {"events_read": seen}


def faults(port: int, clients: int, requests: int, k: int, drops: int, chats: int, max_tokens: int,
           seed: int = 0) -> dict:
    """While `clients` retrieve, `drops` streaming clients disconnect at random points; then `chats`
    concurrent chats must all complete within a timeout."""
    import random

    rng = random.Random(seed)
    plan = [(CHAT[i % len(CHAT)], rng.randint(1, 12)) for i in range(drops)]
    dropped: list[dict] = []
    load: dict = {}
    loader = threading.Thread(target=lambda: load.update(retrieve_load(port, clients, requests, k)))
    loader.start()
    t0 = time.perf_counter()
    droppers = [threading.Thread(target=lambda q=q, n=n: dropped.append(drop_stream(port, q, 200, n)))
                for q, n in plan]
    for t in droppers:
        t.start()
        time.sleep(rng.uniform(0.0, 0.5))
    for t in droppers:
        t.join()
    loader.join()
    drop_wall = time.perf_counter() - t0
    results: list[dict | None] = [None] * chats

    def ask(i: int) -> None:
        try:
            results[i] = chat(port, CHAT[i % len(CHAT)], max_tokens, stream=bool(i % 2))
        except Exception as e:  # noqa: BLE001 - counted as an error
            results[i] = {"error": f"{type(e).__name__}: {e}"}

    t0 = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(chats)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    chats_wall = time.perf_counter() - t0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
        health = json.loads(r.read())
    completed = sum(1 for r in results if r and r.get("text") and not r.get("error"))
    errors = [r["error"] for r in dropped if r.get("error")] + [r["error"] for r in results if r and r.get("error")]
    return {"dropped_streams": sum(1 for r in dropped if "events_read" in r), "drop_events_read": [r.get("events_read")
            for r in dropped], "chats_after": completed, "chats_asked": chats, "errors": len(errors) + load.get("errors", 0),
            "error_examples": errors[:5], "retrieve_during_drops": load, "drop_phase_s": round(drop_wall, 1),
            "chats_after_wall_s": round(chats_wall, 1), "health_after": health["status"],
            "max_tokens": max_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "pydocs"))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--faults-only", action="store_true", help="run only the fault phase (keeps the other figures)")
    ap.add_argument("--drops", type=int, default=10)
    ap.add_argument("--chats-after", type=int, default=20)
    args = ap.parse_args()
    if not (Path(args.index) / "manifest.json").exists():
        sys.exit(f"no index at {args.index}: run `make demo` first (it builds indexes/pydocs)")

    from ragkit import Index

    index = Index.load(args.index)
    import torch

    torch.set_num_threads(1)
    inproc = []
    for q in QUERIES * 3:
        t0 = time.perf_counter()
        index.search(q, k=args.k)
        inproc.append(time.perf_counter() - t0)
    peer = {"p50_ms": round(1000 * pct(inproc, 0.5), 1), "p95_ms": round(1000 * pct(inproc, 0.95), 1)}

    port = free_port()
    server = start_server(args.index, port, max(args.max_tokens, 200))
    if args.faults_only:
        try:
            fault = faults(port, args.clients, args.requests, args.k, args.drops, args.chats_after, args.max_tokens)
        finally:
            server.terminate()
            server.wait(30)
        path = ROOT / "bench" / "results" / "server_load.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        res["faults"] = fault
        res["faults_environment"] = environment()
        print_faults(fault)
        write_results("server_load", res)
        return
    try:
        single = retrieve_load(port, 1, len(QUERIES), args.k)
        load = retrieve_load(port, args.clients, args.requests, args.k)
        questions = (CHAT * ((args.streams + len(CHAT) - 1) // len(CHAT)))[: args.streams]
        sequential = {q: chat(port, q, args.max_tokens, stream=False) for q in dict.fromkeys(questions)}
        results: list[dict | None] = [None] * len(questions)

        def run(i: int) -> None:
            try:
                results[i] = chat(port, questions[i], args.max_tokens, stream=True)
            except Exception as e:  # noqa: BLE001 - reported as a failed stream
                results[i] = {"error": f"{type(e).__name__}: {e}"}

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        streams_wall = time.perf_counter() - t0
        fault = faults(port, args.clients, args.requests, args.k, args.drops, args.chats_after, args.max_tokens)
    finally:
        server.terminate()
        server.wait(30)

    completed = sum(1 for r in results if r and r.get("done"))
    matching = sum(1 for q, r in zip(questions, results)
                   if r and r.get("text") == sequential[q]["text"] and r.get("sources") == sequential[q]["sources"])
    firsts = [r["first_s"] for r in results if r and r.get("first_s")]
    res = {
        "index": Path(args.index).name, "k": args.k, "retriever": index.default_retriever,
        "threads": "server: decode 1 torch thread, prefill 2; generation serialised, retrieval concurrent",
        "retrieve_in_process": peer, "retrieve_http_single_client": single, "retrieve_http_load": load,
        "http_p50_over_in_process_p50": round(single["p50_ms"] / peer["p50_ms"], 2),
        "streams": {"concurrent": len(questions), "completed": completed, "equal_to_sequential": matching,
                    "max_tokens": args.max_tokens, "wall_s": round(streams_wall, 1),
                    "first_token_s_min": round(min(firsts), 2) if firsts else None,
                    "first_token_s_max": round(max(firsts), 2) if firsts else None,
                    "sequential_total_s": round(sum(r["total_s"] for r in sequential.values()), 1),
                    "errors": [r.get("error") for r in results if r and r.get("error")]},
        "faults": fault,
        "environment": environment(),
    }
    print(table(["retrieve", "requests ok", "errors", "p50 ms", "p95 ms", "req/s"], [
        ["in-process Index.search (peer)", len(inproc), 0, peer["p50_ms"], peer["p95_ms"], "-"],
        ["HTTP, 1 client", single["ok"], single["errors"], single["p50_ms"], single["p95_ms"], single["requests_per_s"]],
        [f"HTTP, {args.clients} clients × {args.requests}", load["ok"], load["errors"], load["p50_ms"], load["p95_ms"],
         load["requests_per_s"]]]))
    print(f"HTTP single-client p50 ÷ in-process p50: {res['http_p50_over_in_process_p50']}")
    s = res["streams"]
    print(f"streaming chat: {s['completed']}/{s['concurrent']} completed, {s['equal_to_sequential']} equal to the "
          f"sequential answers, wall {s['wall_s']} s (sequential {s['sequential_total_s']} s)")
    print_faults(fault)
    write_results("server_load", res)


def print_faults(f: dict) -> None:
    print(table(["fault phase", "dropped streams", "chats after (of asked)", "errors", "health after"], [
        [f"{f['retrieve_during_drops'].get('clients')} clients retrieving", f["dropped_streams"],
         f"{f['chats_after']}/{f['chats_asked']}", f["errors"], f["health_after"]]]))


if __name__ == "__main__":
    main()
