"""Prefill and decode speed of the local LLMs per weight format and thread count, and what each
format costs in quality; picks ragkit's `auto` format per model size.

    python bench/qwen_speed.py [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b,smollm2]
                               [--formats float32,bfloat16,int8,torch-dynamic-int8] [--threads 1,2]
                               [--prompt-tokens 400] [--new-tokens 32] [--force] [--out qwen_speed]

Formats: ragkit's `float32`, `bfloat16` and `int8` (bf16 weights for the prompt, an int8 copy for
decode steps: `ragkit.generation.quantize`), and the peer `torch-dynamic-int8` (torch's own dynamic
quantisation, `torch.ao.quantization.quantize_dynamic`: fp32 activations, int8 weights; deprecated
since torch 2.10, so ragkit does not use it; its warnings are silenced here only). Per model and
format: prefill tokens/s (one forward pass over the prompt), decode tokens/s (greedy steps on the KV
cache), resident memory after loading, held-out perplexity on a text the prompt does not contain,
and how many of the first `--new-tokens` greedy tokens equal float32's. Both phases run on the same
thread count (1 or 2), set around each phase and stated in the table. Resumable: each (model,
format) is written to bench/results/qwen_speed.json as soon as it is measured and skipped on the
next run unless --force.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, environment, table, write_results  # noqa: E402

QUESTION = "Write a Python function that reads a text file line by line and returns the lines without trailing whitespace."


def texts(tokenizer, prompt_tokens: int) -> tuple[list[int], list[int]]:
    """(chat prompt ids of about `prompt_tokens`, held-out ids): from the pydocs corpus when built
    (`make demo`), else from ragkit's own docs."""
    corpus = ROOT / "corpora" / "pydocs" / "corpus.jsonl"
    if corpus.is_file():
        docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()[:400]]
    else:
        docs = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))]
    context_docs, heldout_docs = docs[0::2], docs[1::2]
    context = tokenizer.decode(tokenizer.encode("\n\n".join(context_docs))[:prompt_tokens])
    messages = [{"role": "user", "content": f"{context}\n\n{QUESTION}"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(prompt, "input_ids") or isinstance(prompt, dict):
        prompt = prompt["input_ids"]
    return list(prompt), tokenizer.encode("\n\n".join(heldout_docs))[:512]


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def weights_gib(model) -> float:
    """Bytes of the model's parameters and buffers (the peer's packed int8 weights are not tensors
    torch lists, so its figure counts only what stays unquantised)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 2**30


def load(model_name: str, fmt: str):
    from ragkit.generation.loader import load_causal_lm

    if fmt != "torch-dynamic-int8":
        return load_causal_lm(model_name, fmt)[:2]
    import torch

    model, tok, _ = load_causal_lm(model_name, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the peer's own deprecation warnings
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model, tok


def measure(model, prompt: list[int], heldout: list[int], threads: int, new_tokens: int) -> dict:
    import torch

    from ragkit.generation.llm.hf import cache_kwarg
    from ragkit.runtime import torch_threads

    from transformers import DynamicCache

    kw = cache_kwarg(model)
    ids = torch.tensor([prompt])
    with torch_threads(threads), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the peer's quantized ops warn on every call
        model(input_ids=ids[:, :16])  # warm-up
        cache = DynamicCache(config=model.config)
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
        prefill_s = time.perf_counter() - t
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated = [int(token)]
        t = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, use_cache=True, **{kw: cache})  # the cache grows in place
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
        decode_s = time.perf_counter() - t
        h = torch.tensor([heldout])
        logits = model(input_ids=h).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, h[0, 1:]).item()
    return {"prefill_tokens_per_s": round(len(prompt) / prefill_s, 1), "prefill_s": round(prefill_s, 3),
            "decode_tokens_per_s": round((new_tokens - 1) / decode_s, 2), "ms_per_token": round(decode_s / (new_tokens - 1) * 1e3, 1),
            "heldout_ppl": round(math.exp(nll), 3), "greedy": generated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b,smollm2")
    ap.add_argument("--formats", default="float32,bfloat16,int8,torch-dynamic-int8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--force", action="store_true", help="measure again what the results file already holds")
    ap.add_argument("--out", default="qwen_speed", help="results name: bench/results/OUT.json (one per CPU kind: "
                    "qwen_speed is AVX-512 BF16, qwen_speed_avx2 an AVX2 CPU without native bf16)")
    args = ap.parse_args()

    from ragkit.generation.loader import _param_count

    path = RESULTS / f"{args.out}.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res.setdefault("runs", {})
    res["thread_policy"] = ("both phases on the stated torch thread count, set around each phase and restored "
                            "(ragkit's own policy: prefill on 2, decode on 1)")
    for model_name in args.models.split(","):
        from ragkit.generation.llm.hf import resolve_llm

        model_id, target = resolve_llm(model_name)
        if not Path(target).is_dir():
            print(f"skip {model_name}: not installed (make qwen)")
            continue
        n_params = _param_count(model_name)
        for fmt in args.formats.split(","):
            key = f"{model_name}/{fmt}"
            if key in res["runs"] and not args.force:
                print(f"have {key}")
                continue
            gc.collect()
            t = time.perf_counter()
            model, tok = load(model_name, fmt)
            row = {"model": model_id, "params": n_params, "format": fmt, "load_s": round(time.perf_counter() - t, 1),
                   "weights_gib": round(weights_gib(model), 2), "rss_gib_process": round(rss_gib(), 2), "threads": {}}
            prompt, heldout = texts(tok, args.prompt_tokens)
            row["prompt_tokens"], row["heldout_tokens"] = len(prompt), len(heldout)
            for threads in [int(x) for x in args.threads.split(",")]:
                row["threads"][str(threads)] = measure(model, prompt, heldout, threads, args.new_tokens)
                print(key, threads, {k: v for k, v in row["threads"][str(threads)].items() if k != "greedy"}, flush=True)
            res["runs"][key] = row
            del model
            res["environment"] = environment()
            write_results(args.out, res)
    summarise(res, args.new_tokens)
    write_results(args.out, res)


def summarise(res: dict, new_tokens: int) -> None:
    """Greedy agreement with float32, the table, and the best format per model (decode tokens/s on
    one thread among formats within 2% of float32's held-out perplexity)."""
    from ragkit.generation.quantize import resolve_dtype

    rows, best = [], {}
    for key, row in res["runs"].items():
        model_name, fmt = key.split("/")
        ref = res["runs"].get(f"{model_name}/float32")
        for threads, m in row["threads"].items():
            if ref and threads in ref["threads"]:
                g, r = m["greedy"], ref["threads"][threads]["greedy"]
                m["greedy_equal_to_float32"] = next((i for i, (a, b) in enumerate(zip(g, r)) if a != b), len(g))
                m["ppl_vs_float32"] = round(m["heldout_ppl"] / ref["threads"][threads]["heldout_ppl"], 4)
            rows.append([model_name, fmt, threads, row["prompt_tokens"], m["prefill_tokens_per_s"], m["decode_tokens_per_s"],
                         m.get("ppl_vs_float32", ""), m.get("greedy_equal_to_float32", ""), row.get("weights_gib", ""), row["load_s"]])
    for model_name in sorted({k.split("/")[0] for k in res["runs"]}):
        ok = {k.split("/")[1]: r for k, r in res["runs"].items() if k.startswith(model_name + "/")
              and "1" in r["threads"] and r["threads"]["1"].get("ppl_vs_float32", 1.0) <= 1.02}
        if ok:
            fastest = max(ok, key=lambda f: ok[f]["threads"]["1"]["decode_tokens_per_s"])
            params = next(iter(ok.values()))["params"]
            best[model_name] = {"fastest_decode_1_thread": fastest, "params": params,
                                "ragkit_auto": resolve_dtype("auto", params)}
            ref = res["runs"].get(f"{model_name}/float32")
            if ref:
                for f, r in ok.items():
                    best[model_name].setdefault("decode_speedup_vs_float32_1_thread", {})[f] = round(
                        r["threads"]["1"]["decode_tokens_per_s"] / ref["threads"]["1"]["decode_tokens_per_s"], 2)
    res["best"] = best
    print(table(["model", "format", "threads", "prompt", "prefill tok/s", "decode tok/s", "ppl ÷ fp32",
                 f"greedy = fp32 (of {new_tokens})", "weights GiB", "load s"], rows))
    for m, b in best.items():
        print(f"{m}: fastest decode on 1 thread within 2% of float32 perplexity: {b['fastest_decode_1_thread']}; "
              f"ragkit auto picks {b['ragkit_auto']}; decode speed-up vs float32: {b.get('decode_speedup_vs_float32_1_thread')}")


if __name__ == "__main__":
    main()
