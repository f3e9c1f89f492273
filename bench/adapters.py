"""White-box domain adapters on the Python-docs domain, in one run: held-out perplexity of
SmolLM2-135M-Instruct alone, with a kNN-LM datastore, with proxy-tuning (distilled expert /
anti-expert pair), stacked, and LoRA-tuned; share of the log-perplexity gap closed; decode
tokens/s with each adapter ÷ the LLM alone (greedy, 1 torch thread); datastore build tokens/s.

usage: python bench/adapters.py [--knn adapters/pydocs-knn] [--proxy adapters/pydocs-proxy]
                                [--lora adapters/pydocs-lora] [--text corpora/pydocs-lm/test.txt]
The adapters are made and fitted with `ragkit adapter train / fit` (README, "Domain adapters").
Writes bench/results/adapters.json: {"knn": {"ppl_reduction", "gap_closed", "speed_ratio"},
"proxy": {...}, "stacked": {...}, ...}.
Timings are taken on a shared 2-core machine: other jobs' load (recorded as load1) makes them noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, environment, write_results  # noqa: E402

from ragkit.adaptation import load_adapter  # noqa: E402
from ragkit.adaptation.evaluate import evaluate, format_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--knn", default=str(ROOT / "adapters" / "pydocs-knn"))
    ap.add_argument("--proxy", default=str(ROOT / "adapters" / "pydocs-proxy"))
    ap.add_argument("--lora", default=str(ROOT / "adapters" / "pydocs-lora"))
    ap.add_argument("--text", default=str(ROOT / "corpora" / "pydocs-lm" / "test.txt"))
    ap.add_argument("--max-tokens", type=int, default=8192, help="held-out tokens scored (the first N of the text)")
    ap.add_argument("--stride", type=int, default=384, help="new tokens scored per 512-token window")
    ap.add_argument("--from-eval", default=None, help="reuse the JSON of a `ragkit adapter eval --json` run of the "
                                                      "same adapters instead of measuring again")
    ap.add_argument("--speed-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for p in (args.knn, args.proxy, args.lora, args.text):
        if not Path(p).exists():
            sys.exit(f"missing {p}: build the split and adapters first (README, 'Domain adapters')")
    if args.from_eval:
        r = json.loads(Path(args.from_eval).read_text())
    else:
        r = evaluate([args.knn, args.proxy], Path(args.text).read_text(encoding="utf-8"), lora=args.lora,
                     max_tokens=args.max_tokens, stride=args.stride, speed_tokens=args.speed_tokens,
                     speed_repeats=args.repeats)
    names = [a["name"] for a in r["adapters"]]
    sysr = r["systems"]
    pick = ("ppl", "ppl_reduction", "gap_closed", "speed_ratio", "decode_tokens_per_s")

    def row(name):
        return {k: sysr[name].get(k) for k in pick}

    knn = load_adapter(args.knn).manifest
    split = Path(args.text).parent / "split.json"
    result = {"knn": {**row(names[0]), "params": r["adapters"][0]["params"],
                      "datastore_keys": knn["training"].get("keys"),
                      "datastore_build_tokens_per_s": knn["training"].get("build_tokens_per_s"),
                      "datastore_build_threads": knn["training"].get("threads")},
              "proxy": {**row(names[1]), "params": r["adapters"][1]["params"]},
              "stacked": {**row("+".join(names)), "order": names,
                          "params_stacked": r["adapters"][1].get("params_stacked", {})},
              "base": row("base"), "lora": sysr.get("lora"),
              "held_out": {"text": str(Path(args.text).relative_to(ROOT)) if Path(args.text).is_relative_to(ROOT)
                           else args.text, "tokens": r["tokens"], "window": r["window"], "stride": r["stride"],
                           "split_overlap": json.loads(split.read_text())["overlap"] if split.is_file() else None},
              "measured_by": f"ragkit adapter eval (JSON {args.from_eval})" if args.from_eval else "bench/adapters.py",
              "threads": r["threads"], "speed_tokens": r.get("speed_tokens", args.speed_tokens),
              "speed_repeats": r.get("speed_repeats", args.repeats),
              "timing_note": "shared 2-core machine with other jobs running: decode timings are noisy (load1 below)",
              "load1_during_eval": r["load1"], "environment": environment()}
    print(format_table(r))
    print(f"threads: perplexity {r['threads']['perplexity']}, decoding 1 (torch.set_num_threads); load1 {r['load1']}")
    print(f"datastore build: {result['knn']['datastore_build_tokens_per_s']} tokens/s "
          f"({result['knn']['datastore_keys']} keys, {result['knn']['datastore_build_threads']} threads)")
    write_results("adapters", result)


if __name__ == "__main__":
    main()
