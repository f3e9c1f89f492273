"""Generation speed: `ragkit ask` (Pipeline.stream: retrieve + pack + generate) vs plain transformers
`generate` on the same prompt and model, one run, greedy; time to first token, tokens/s, and the
share of ask latency spent in retrieval.

usage: python bench/generation.py [--index indexes/pydocs] [--max-new-tokens 64]
Threads: ragkit's policy (prompt prefill on 2 torch threads, decoding on 1); the peer, plain
transformers `generate`, runs on 1 thread (the decode policy) and on 2 threads.
Writes bench/results/generation.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, pydocs_generation_args, table, write_results  # noqa: E402

import torch  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from ragkit.config import PipelineConfig  # noqa: E402
from ragkit.generation.llm import GenerationConfig  # noqa: E402
from ragkit.generation.pipeline import Pipeline  # noqa: E402

QUESTIONS = ["How do I read a text file line by line?", "What does the assert statement do?",
             "How can I sort a list of dictionaries by a key?", "What is a generator expression?",
             "How do I run a shell command and capture its output?", "What does the with statement do?"]


class FirstToken(BaseStreamer):
    """Records when generate() emits its first new token."""

    def __init__(self, t0: float) -> None:
        self.t0, self.first, self.calls = t0, None, 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first put() is the prompt
            self.first = time.perf_counter() - self.t0

    def end(self) -> None:
        pass


def main() -> None:
    args = pydocs_generation_args(argparse.ArgumentParser())
    config = PipelineConfig(index=args.index)
    config.retrieval.k = args.k
    config.generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    pipe = Pipeline.from_config(config)
    llm = pipe.llm
    pipe.ask("warm-up question", GenerationConfig(max_new_tokens=4))
    rows = {"ragkit": [], "transformers": [], "transformers_2_threads": []}
    retrieval_share = []
    for i, q in enumerate(QUESTIONS):
        order = list(rows) if i % 2 == 0 else list(rows)[::-1]
        for system in order:
            if system == "ragkit":
                t0 = time.perf_counter()
                stream = pipe.stream(q)
                first = None
                for _ in stream:
                    first = first or time.perf_counter() - t0
                total = time.perf_counter() - t0
                messages = stream.messages
                tokens = stream.answer.completion_tokens
                retrieval_share.append(stream.answer.timings["retrieve_s"] / total)
            else:
                messages = pipe.stream(q).messages  # the very prompt ragkit sends
                ids = llm.encode_prompt(messages)
                torch.set_num_threads(2 if system.endswith("2_threads") else 1)
                t0 = time.perf_counter()
                streamer = FirstToken(t0)
                with torch.inference_mode():
                    out = llm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=args.max_new_tokens, streamer=streamer,
                                             pad_token_id=llm.tokenizer.eos_token_id)
                total = time.perf_counter() - t0
                first = streamer.first
                tokens = out.shape[1] - ids.shape[1]
            rows[system].append({"ttft_s": first, "total_s": total, "tokens": tokens,
                                 "decode_tps": (tokens - 1) / (total - first) if tokens > 1 else 0.0})
    summary = {s: {"ttft_ms": round(1000 * statistics.median(r["ttft_s"] for r in v), 1),
                   "decode_tokens_per_s": round(statistics.median(r["decode_tps"] for r in v), 2),
                   "end_to_end_tokens_per_s": round(sum(r["tokens"] for r in v) / sum(r["total_s"] for r in v), 2)}
               for s, v in rows.items()}
    res = {
        "questions": len(QUESTIONS), "max_new_tokens": args.max_new_tokens, "k": args.k, "llm": llm.model_id,
        "threads": "ragkit: prefill 2 torch threads, decode 1; transformers: 1 thread, and 2 threads",
        **summary,
        "tokens_per_s_ratio": round(summary["ragkit"]["decode_tokens_per_s"] / summary["transformers"]["decode_tokens_per_s"], 3),
        "tokens_per_s_ratio_vs_2_threads": round(summary["ragkit"]["decode_tokens_per_s"]
                                                 / summary["transformers_2_threads"]["decode_tokens_per_s"], 3),
        "ttft_ratio_transformers_over_ragkit": round(summary["transformers"]["ttft_ms"] / summary["ragkit"]["ttft_ms"], 3),
        "retrieval_share_of_latency": round(statistics.median(retrieval_share), 4),
        "environment": environment(),
    }
    print(table(["system", "TTFT ms (median)", "decode tokens/s", "end-to-end tokens/s"],
                [[s, v["ttft_ms"], v["decode_tokens_per_s"], v["end_to_end_tokens_per_s"]] for s, v in summary.items()]))
    print(f"tokens/s ratio ragkit ÷ transformers: {res['tokens_per_s_ratio']}; "
          f"retrieval share of ask latency: {res['retrieval_share_of_latency']:.2%}")
    write_results("generation", res)


if __name__ == "__main__":
    main()
