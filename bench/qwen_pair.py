"""The Qwen2.5-Coder pair: the 1.5B as the LLM, the 0.5B as its small sibling.

    python bench/qwen_pair.py speculative [--index indexes/pydocs] [--max-new-tokens 64] [-k 3]

Phase `speculative`: the pydocs questions of bench/generation.py, each prompt built by the pipeline
(retrieval k 3, the same prompt both ways); greedy answers of the 1.5B alone (the peer: its own
decoding) and of the 1.5B with the 0.5B drafting (`HFCausalLM.attach_draft`: transformers' assisted
generation). Tokens/s = answer tokens / generate wall time (prefill included, both ways); `identical`
is true when every answer's tokens equal the 1.5B's own. Both models in ragkit's `auto` format
(int8 decode at these sizes). Thread policy: ragkit's (prompt prefill on 2 torch threads, decoding
on 1). Results merge into bench/results/qwen_pair.json under the phase's key.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, environment, table, write_results  # noqa: E402
from generation import QUESTIONS  # noqa: E402


def speculative(args) -> dict:
    from ragkit.config import PipelineConfig
    from ragkit.generation.llm import GenerationConfig
    from ragkit.generation.llm.hf import HFCausalLM
    from ragkit.generation.pipeline import Pipeline
    from ragkit.retrieval.index import Index

    t = time.perf_counter()
    big = HFCausalLM.from_pretrained("qwen2.5-coder-1.5b")
    small = HFCausalLM.from_pretrained("qwen2.5-coder-0.5b")
    load_s = time.perf_counter() - t
    config = PipelineConfig(index=args.index)
    config.retrieval.k = args.k
    pipe = Pipeline(Index.load(args.index), big, config)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    rows, per_q = [], []
    for q in QUESTIONS:
        prompt = pipe.stream(q).messages  # the very prompt ragkit sends (retrieval k 3)
        res = {}
        for mode in ("alone", "drafted"):
            big.attach_draft(small if mode == "drafted" else None)
            t = time.perf_counter()
            out = big.generate(prompt, gen)
            wall = time.perf_counter() - t
            res[mode] = {"text": out.text, "tokens": out.completion_tokens, "s": round(wall, 2),
                         "tokens_per_s": round(out.completion_tokens / wall, 2), "prompt_tokens": out.prompt_tokens}
        big.attach_draft(None)
        same = res["alone"]["text"] == res["drafted"]["text"]
        per_q.append({"question": q, **res, "identical": same})
        rows.append([q[:40], res["alone"]["prompt_tokens"], res["alone"]["tokens"], res["alone"]["tokens_per_s"],
                     res["drafted"]["tokens_per_s"], round(res["drafted"]["tokens_per_s"] / res["alone"]["tokens_per_s"], 2), same])
        print(rows[-1], flush=True)
    alone = sum(p["alone"]["tokens"] for p in per_q) / sum(p["alone"]["s"] for p in per_q)
    drafted = sum(p["drafted"]["tokens"] for p in per_q) / sum(p["drafted"]["s"] for p in per_q)
    print(table(["question", "prompt tokens", "answer tokens", "1.5B alone tok/s", "drafted by 0.5B tok/s", "speed-up", "identical"], rows))
    print(f"all questions: {alone:.2f} vs {drafted:.2f} tokens/s, speed-up {drafted / alone:.2f}; "
          f"identical {sum(p['identical'] for p in per_q)}/{len(per_q)}")
    return {"speedup": round(drafted / alone, 3), "identical": all(p["identical"] for p in per_q),
            "tokens_per_s_alone": round(alone, 2), "tokens_per_s_drafted": round(drafted, 2),
            "method": "transformers assisted generation (HFCausalLM.attach_draft); greedy; no white-box adapters",
            "formats": {"llm": "int8 (auto)", "draft": "int8 (auto)"}, "k": args.k,
            "max_new_tokens": args.max_new_tokens, "load_s": round(load_s, 1),
            "thread_policy": "prefill on 2 torch threads, decoding (and drafting) on 1", "questions": per_q}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["speculative"])
    ap.add_argument("--index", default=str(ROOT / "indexes" / "pydocs"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args()
    if not (Path(args.index) / "manifest.json").exists():
        sys.exit(f"no index at {args.index}: run `make demo` first (it builds indexes/pydocs) or pass --index")
    path = RESULTS / "qwen_pair.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res[args.phase] = {"speculative": speculative}[args.phase](args)
    res["environment"] = environment()
    write_results("qwen_pair", res)


if __name__ == "__main__":
    main()
