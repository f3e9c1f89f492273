"""Load test of `ragkit serve` on loopback: 50 concurrent clients × 20 `/v1/retrieve` requests, and 8
concurrent streaming chat requests (all must complete, none mixed up), then a fault phase: while 50
clients retrieve, 10 streaming clients disconnect at random points; then 20 chats must all complete.

The server is the real `ragkit serve` in its own process; clients are threads in this process with
keep-alive connections. Peer: the same searches as in-process `Index.search` calls (no HTTP), so
the table shows what the server adds. Streams are checked against the same questions answered one
at a time beforehand (greedy decoding: the texts must be equal).

Streams: each question streamed alone first (the sequential greedy reference and "one stream alone"),
then all at once, on the batching server (ragkit's default) and on a serial one (max_batch 1, the
peer), with retrieval (k 3: ~900-token prompts, so reading prompts dominates on a CPU) and without
(short prompts: decoding dominates); then 12 clients at once against 1 row and a queue of 2 (the rest must get 503 at once).

usage: python bench/server_load.py [--index indexes/pydocs] [--clients 50] [--requests 20] [--streams 8]
                                   [--faults-only | --streams-only]   (one phase; other figures are kept)
Threads (ragkit's policy): a single decoding row runs on 1 torch thread, prefill and steps of several
rows on 2; concurrent generations share one batch, retrieval runs concurrently. Writes bench/results/server_load.json.
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
from common import ROOT, environment, require_index, table, write_results  # noqa: E402

THREADS = ("server: ragkit's policy: a single row decodes on 1 torch thread; prefill and steps of several rows "
           "on 2; concurrent generations share one batch (server.max_batch 8), retrieval concurrent")

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


def start_server(index: str, port: int, max_tokens: int, max_batch: int = 8, max_queue: int = 32) -> subprocess.Popen:
    config = Path(tempfile.mkdtemp()) / "pipeline.yaml"
    config.write_text(f"index: {index}\nretrieval: {{k: 3}}\n"
                      f"server: {{max_tokens: {max_tokens}, max_batch: {max_batch}, max_queue: {max_queue}}}\n")
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


def chat(port: int, question: str, max_tokens: int, stream: bool, retrieval: bool = True) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "ragkit", "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "stream": stream, "stream_options": {"include_usage": True},
                       **({} if retrieval else {"ragkit": {"retrieval": False}})})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status == 503:
        resp.read()
        return {"busy": True, "retry_after": resp.headers.get("Retry-After"), "total_s": time.perf_counter() - t0}
    if not stream:
        data = json.loads(resp.read())
        return {"text": data["choices"][0]["message"]["content"], "total_s": time.perf_counter() - t0,
                "sources": [s["chunk_id"] for s in data["ragkit"]["sources"]]}
    text, first, sources, done, prompt_tokens = "", None, [], False, None
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
        if event.get("usage"):
            prompt_tokens = event["usage"]["prompt_tokens"]
    conn.close()
    return {"text": text, "first_s": first, "total_s": time.perf_counter() - t0, "sources": sources, "done": done,
            "prompt_tokens": prompt_tokens}


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


def concurrent_streams(port: int, questions: list[str], max_tokens: int,
                       retrieval: bool = True) -> tuple[list[dict], float]:
    """All `questions` streamed at once, one client thread each: (results, wall seconds)."""
    results: list[dict] = [{}] * len(questions)

    def run(i: int) -> None:
        try:
            results[i] = chat(port, questions[i], max_tokens, stream=True, retrieval=retrieval)
        except Exception as e:  # noqa: BLE001 - reported as a failed stream
            results[i] = {"error": f"{type(e).__name__}: {e}"}

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    return results, time.perf_counter() - t0


def streams_phase(index: str, questions: list[str], max_tokens: int, overfull: int) -> dict:
    """8 concurrent streams on the batching server vs each alone (the sequential greedy reference), the
    same on a serial server (max_batch 1: the peer), each with retrieval (k 3: ~900-token prompts) and
    without (short prompts); then an over-full serial server (503, never hangs)."""
    out: dict = {}
    for mode, batch in (("batched", 8), ("serial", 1)):
        port = free_port()
        server = start_server(index, port, max(max_tokens, 200), max_batch=batch, max_queue=32)
        try:
            for retrieval in (True, False):
                alone = {q: chat(port, q, max_tokens, stream=True, retrieval=retrieval) for q in dict.fromkeys(questions)}
                results, wall = concurrent_streams(port, questions, max_tokens, retrieval=retrieval)
                out[(mode, retrieval)] = stream_figures(questions, alone, results, wall, max_tokens)
            if mode == "serial":  # over-full: one row, a queue of 2, `overfull` clients at once
                server.terminate()
                server.wait(30)
                port = free_port()
                server = start_server(index, port, max(max_tokens, 200), max_batch=1, max_queue=2)
                full, full_wall = concurrent_streams(port, (questions * overfull)[:overfull], max_tokens)
                busy = [r for r in full if r.get("busy")]
                out["overfull"] = {"clients": overfull, "max_batch": 1, "max_queue": 2,
                                   "completed": sum(1 for r in full if r.get("done")), "busy_503": len(busy),
                                   "errors": sum(1 for r in full if r.get("error")),
                                   "busy_answer_s_max": round(max((r["total_s"] for r in busy), default=0), 3),
                                   "retry_after": sorted({r["retry_after"] for r in busy}), "wall_s": round(full_wall, 1)}
        finally:
            server.terminate()
            server.wait(30)
    return out


def stream_figures(questions: list[str], alone: dict, results: list[dict], wall: float, max_tokens: int) -> dict:
    """One concurrent-streams run against the same questions streamed alone."""
    one = sorted(r["total_s"] for r in alone.values())[len(alone) // 2]
    first_alone = sorted(r["first_s"] for r in alone.values() if r.get("first_s"))
    firsts = [r["first_s"] for r in results if r.get("first_s")]
    prompts = [r["prompt_tokens"] for r in alone.values() if r.get("prompt_tokens")]
    first_alone_p50 = first_alone[len(first_alone) // 2] if first_alone else None
    return {
        "concurrent": len(questions), "completed": sum(1 for r in results if r.get("done")),
        "equal_to_sequential": sum(1 for q, r in zip(questions, results)
                                   if r.get("text") == alone[q]["text"] and r.get("sources") == alone[q]["sources"]),
        "max_tokens": max_tokens, "prompt_tokens_mean": round(sum(prompts) / len(prompts)) if prompts else None,
        "wall_s": round(wall, 2), "one_stream_s": round(one, 2), "wall_ratio_vs_one_stream": round(wall / one, 2),
        "one_stream_first_token_s": round(first_alone_p50, 2) if first_alone_p50 else None,
        # the ratio if decoding cost nothing: every prompt is still read once, one after another
        "prefill_only_ratio": round(len(questions) * first_alone_p50 / one, 2) if first_alone_p50 else None,
        "sequential_total_s": round(sum(r["total_s"] for r in alone.values()), 2),
        "first_token_p50_s": round(pct(firsts, 0.5), 2) if firsts else None,
        "first_token_p95_s": round(pct(firsts, 0.95), 2) if firsts else None,
        "errors": sum(1 for r in results if r.get("error") or r.get("busy")),
        "error_examples": [r.get("error") for r in results if r.get("error")][:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "pydocs"))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--faults-only", action="store_true", help="run only the fault phase (keeps the other figures)")
    ap.add_argument("--streams-only", action="store_true", help="run only the streams phase (keeps the other figures)")
    ap.add_argument("--overfull", type=int, default=12, help="clients sent at once to a server with 1 row and a queue of 2")
    ap.add_argument("--drops", type=int, default=10)
    ap.add_argument("--chats-after", type=int, default=20)
    args = ap.parse_args()
    require_index(args.index)

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

    questions = (CHAT * ((args.streams + len(CHAT) - 1) // len(CHAT)))[: args.streams]
    path = ROOT / "bench" / "results" / "server_load.json"
    if args.streams_only:
        res = json.loads(path.read_text()) if path.exists() else {}
        res.update(streams_fields(streams_phase(args.index, questions, args.max_tokens, args.overfull)))
        res["threads"], res["streams_environment"] = THREADS, environment()
        print_streams(res)
        write_results("server_load", res)
        return
    port = free_port()
    server = start_server(args.index, port, max(args.max_tokens, 200))
    if args.faults_only:
        try:
            fault = faults(port, args.clients, args.requests, args.k, args.drops, args.chats_after, args.max_tokens)
        finally:
            server.terminate()
            server.wait(30)
        res = json.loads(path.read_text()) if path.exists() else {}
        res["faults"] = fault
        res["faults_environment"] = environment()
        print_faults(fault)
        write_results("server_load", res)
        return
    try:
        single = retrieve_load(port, 1, len(QUERIES), args.k)
        load = retrieve_load(port, args.clients, args.requests, args.k)
        fault = faults(port, args.clients, args.requests, args.k, args.drops, args.chats_after, args.max_tokens)
    finally:
        server.terminate()
        server.wait(30)
    streams = streams_phase(args.index, questions, args.max_tokens, args.overfull)
    res = {
        "index": Path(args.index).name, "k": args.k, "retriever": index.default_retriever,
        "threads": THREADS,
        "retrieve_in_process": peer, "retrieve_http_single_client": single, "retrieve_http_load": load,
        "http_p50_over_in_process_p50": round(single["p50_ms"] / peer["p50_ms"], 2),
        **streams_fields(streams),
        "faults": fault,
        "environment": environment(),
    }
    print(table(["retrieve", "requests ok", "errors", "p50 ms", "p95 ms", "req/s"], [
        ["in-process Index.search (peer)", len(inproc), 0, peer["p50_ms"], peer["p95_ms"], "-"],
        ["HTTP, 1 client", single["ok"], single["errors"], single["p50_ms"], single["p95_ms"], single["requests_per_s"]],
        [f"HTTP, {args.clients} clients × {args.requests}", load["ok"], load["errors"], load["p50_ms"], load["p95_ms"],
         load["requests_per_s"]]]))
    print(f"HTTP single-client p50 ÷ in-process p50: {res['http_p50_over_in_process_p50']}")
    print_streams(res)
    print_faults(fault)
    write_results("server_load", res)


def streams_fields(streams: dict) -> dict:
    return {"streams": streams[("batched", True)], "streams_serial": streams[("serial", True)],
            "streams_no_retrieval": streams[("batched", False)], "streams_no_retrieval_serial": streams[("serial", False)],
            "overfull": streams["overfull"]}


def print_streams(res: dict) -> None:
    o = res["overfull"]
    runs = (("ragkit, batched, retrieval k 3", "streams"), ("peer: serial, retrieval k 3", "streams_serial"),
            ("ragkit, batched, no retrieval", "streams_no_retrieval"),
            ("peer: serial, no retrieval", "streams_no_retrieval_serial"))
    print(table(["8 concurrent streams", "prompt tokens", "completed", "equal to alone", "wall s", "one alone s",
                 "wall ÷ one", "prefill-only ratio", "first token p50 s", "p95 s", "errors"], [
        [name, r["prompt_tokens_mean"], r["completed"], r["equal_to_sequential"], r["wall_s"], r["one_stream_s"],
         r["wall_ratio_vs_one_stream"], r["prefill_only_ratio"], r["first_token_p50_s"], r["first_token_p95_s"],
         r["errors"]] for name, key in runs for r in [res[key]]]))
    for label, b, s in (("retrieval k 3", res["streams"], res["streams_serial"]),
                        ("no retrieval", res["streams_no_retrieval"], res["streams_no_retrieval_serial"])):
        print(f"{label}: batched wall ÷ serial wall {round(b['wall_s'] / s['wall_s'], 2)}")
    print(f"over-full (1 row, queue 2, {o['clients']} clients at once): {o['completed']} completed, {o['busy_503']} "
          f"answered 503 (slowest 503 in {o['busy_answer_s_max']} s, Retry-After {o['retry_after']}), "
          f"{o['errors']} errors")


def print_faults(f: dict) -> None:
    print(table(["fault phase", "dropped streams", "chats after (of asked)", "errors", "health after"], [
        [f"{f['retrieve_during_drops'].get('clients')} clients retrieving", f["dropped_streams"],
         f"{f['chats_after']}/{f['chats_asked']}", f["errors"], f["health_after"]]]))


if __name__ == "__main__":
    main()
