"""The Qwen2.5-Coder pair: the 1.5B as the LLM, the 0.5B as its small sibling.

    python bench/qwen_pair.py speculative [--index indexes/pydocs] [--max-new-tokens 64] [-k 3] [--lookup 3]
                                          [--setting-questions]
    python bench/qwen_pair.py cascade [--limit 200] [--train-limit 100] [-k 3]

Phase `speculative`: the pydocs questions of bench/generation.py, each prompt built by the pipeline
(retrieval k 3, the same prompt both ways); greedy answers of the 1.5B alone (the peer: its own
decoding) and of the 1.5B with the 0.5B drafting (`HFCausalLM.attach_draft`: ragkit's own loop,
`ragkit.generation.llm.speculative`). Tokens/s = answer tokens / generate wall time (prefill
included). The peer is the 1.5B's own decoding, with its default attention (SDPA) and with the eager
attention a draft switches on; `identical` is true when every drafted answer equals the latter. Both models in ragkit's `auto` format
(int8 decode at these sizes). Thread policy: ragkit's (prompt prefill and multi-token checks on 2 torch
threads, single decode steps and drafting on 1). 
Phase `cascade`: PubMedQA (pubmedqa_labeled, yes/no/maybe read from the next token as `ragkit
eval-qa` does, BM25 retrieval k 3, the same hits for both models): the 0.5B answers; when its top
label's probability is under a threshold the 1.5B answers instead. Both models' label scores are
first corrected by two label log-biases per model fitted on `--train-limit` train questions
(`fit_label_bias`: label-prior calibration; small models lean to one label), and the threshold is
chosen on the same train questions (the lowest escalation rate keeping 95% of the 1.5B's train
accuracy), then read on `--limit` test questions: accuracy and compute (parameters × prompt tokens,
and measured seconds) as fractions of the 1.5B alone (calibrated the same way; the uncalibrated
figures beside), the accuracy-compute curve, and an exact McNemar test against the 1.5B on the same
questions. Both models' label probabilities per question are cached in `--work`/cascade_rows.json,
so an interrupted run resumes.

Phases `pydocs` and `pubmed`: the white-box figures of a domain (Python docs; PubMedQA contexts:
`knn`, `proxy`, `poe`, `contrastive`, `stacked`: gap_closed, speed_ratio) from the `ragkit adapter
eval --json` files the Qwen recipe of docs/adaptation.md writes (`--eval-json`, `--reference-json`).

Phase `pair_speed`: decode speed of the paired proxy vs apart only (a one-step LoRA: see `pair_speed`).
Phase `proxy_pair`: see `proxy_pair` below (the expert and anti-expert as one batch of two vs apart).

Results merge into bench/results/qwen_pair.json under the phase's key.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, pydocs_generation_args, table, write_results  # noqa: E402
from generation import QUESTIONS  # noqa: E402


# pydocs questions that are not the bench's, for choosing draft settings (`--setting-questions`)
SETTING_QUESTIONS = ["How do I parse command line arguments?", "How do I create a temporary file?",
                     "How do I format a date as a string?"]


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
    modes = ("alone", "alone_eager", "drafted", "drafted_lookup")
    for q in (SETTING_QUESTIONS if args.setting_questions else QUESTIONS)[:args.questions]:
        prompt = pipe.stream(q).messages  # the very prompt ragkit sends (retrieval k 3)
        t = time.perf_counter()
        big.next_token_logits(prompt)  # the prompt's forward pass alone: subtracted for decode-only rates
        prefill_s = time.perf_counter() - t
        res, stats = {}, {}
        for mode in modes:
            big.attach_draft(small if mode.startswith("drafted") else None, lookup=args.lookup if mode == "drafted_lookup" else 0)
            big.step_attention = "eager" if mode != "alone" else None
            t = time.perf_counter()
            out = big.generate(prompt, gen)
            wall = time.perf_counter() - t
            res[mode] = {"text": out.text, "tokens": out.completion_tokens, "s": round(wall, 2),
                         "tokens_per_s": round(out.completion_tokens / wall, 2), "prompt_tokens": out.prompt_tokens,
                         "decode_tokens_per_s": round(out.completion_tokens / max(wall - prefill_s, 1e-3), 2)}
            if mode.startswith("drafted"):
                stats[mode] = dict(big.draft_stats)
        big.attach_draft(None)
        same = all(res["alone_eager"]["text"] == res[m]["text"] for m in modes[2:])
        per_q.append({"question": q, "prefill_s": round(prefill_s, 2), **res, "identical": same, "draft_stats": stats,
                      "identical_to_default_kernels": res["alone"]["text"] == res["drafted"]["text"]})
        rows.append([q[:40], res["alone"]["prompt_tokens"], round(prefill_s, 1), res["alone"]["tokens"],
                     *(res[m]["tokens_per_s"] for m in modes),
                     round(res["drafted"]["tokens_per_s"] / res["alone"]["tokens_per_s"], 2),
                     round(res["drafted_lookup"]["tokens_per_s"] / res["alone"]["tokens_per_s"], 2), same])
        print(rows[-1], flush=True)

    def rate(mode: str, decode_only: bool = False) -> float:
        return sum(p[mode]["tokens"] for p in per_q) / sum(p[mode]["s"] - (p["prefill_s"] if decode_only else 0) for p in per_q)

    alone, eager, drafted, looked = (rate(m) for m in modes)
    decode = {m: round(rate(m, decode_only=True), 2) for m in modes}
    print(table(["question", "prompt tokens", "prefill s", "answer tokens", "1.5B alone tok/s", "alone, eager steps tok/s",
                 "drafted by 0.5B tok/s", f"drafted + lookup {args.lookup} tok/s", "speed-up drafted",
                 "speed-up + lookup", "identical (eager steps)"], rows))
    print(f"all questions: alone {alone:.2f}, alone with eager steps {eager:.2f}, drafted {drafted:.2f}, drafted with "
          f"prompt lookup {looked:.2f} tokens/s: speed-up {drafted / alone:.2f} / {looked / alone:.2f}; decode only "
          f"(prefill subtracted) {decode}; identical {sum(p['identical'] for p in per_q)}/{len(per_q)}")
    # `speedup` is ragkit's default (lookup off: `llm.draft_lookup` 0), not the better of the two on these questions
    return {"speedup": round(drafted / alone, 3), "identical": all(p["identical"] for p in per_q),
            "speedup_from": "drafted (ragkit's default: no prompt lookup)", "speedup_drafted": round(drafted / alone, 3),
            "speedup_drafted_lookup": round(looked / alone, 3), "speedup_vs_eager_steps": round(drafted / eager, 3),
            "decode_only_tokens_per_s": decode,
            "decode_only_speedup": round(decode["drafted"] / decode["alone"], 3),
            "identical_to_default_kernels": sum(p["identical_to_default_kernels"] for p in per_q),
            "tokens_per_s_alone": round(alone, 2), "tokens_per_s_alone_eager_steps": round(eager, 2),
            "tokens_per_s_drafted": round(drafted, 2), "tokens_per_s_drafted_lookup": round(looked, 2),
            "method": ("ragkit's own loop (ragkit.generation.llm.speculative): the 0.5B drafts up to "
                       f"{big.draft_tokens} tokens, stopping after one under {big.draft_confidence} probability; "
                       f"with lookup, a round whose last {args.lookup} tokens occurred earlier in the prompt or answer "
                       "checks the tokens that followed them instead of drafting; the 1.5B checks them in one pass; "
                       "greedy; no white-box adapters"),
            "draft_settings_chosen_on": ("3 pydocs questions that are not the bench's (K 6/8/10, confidence 0/0.4/0.5/0.6); "
                                         f"lookup n-gram {args.lookup} fixed beforehand, not tuned"),
            "acceptance": {m: {k: sum(p["draft_stats"][m][k] for p in per_q) for k in ("checks", "proposed", "kept", "looked_up")}
                           for m in modes[2:]},
            "identical_means": ("the drafted text equals the 1.5B's own greedy text with the same decode kernels "
                                "(eager attention, which a draft switches on); speedup is against the 1.5B's default "
                                "decoding (SDPA attention)"),
            "formats": {"llm": "int8 (auto)", "draft": "int8 (auto)"}, "k": args.k,
            "max_new_tokens": args.max_new_tokens, "load_s": round(load_s, 1),
            "thread_policy": "prompt prefill and multi-token checks on 2 torch threads, single steps and drafting on 1",
            "questions": per_q}


def label_probs(pipeline, question: str, hits, label_ids) -> tuple[dict, float, int]:
    """The LLM's probability of each label word (softmax over the label scores `classify` ranks
    by) for one question, the seconds of its one forward pass, and the prompt's tokens."""
    import torch

    from ragkit.generation.evaluate import LABEL_PROMPT, LABELS
    from ragkit.generation.llm import GenerationConfig

    messages = pipeline.prepare(LABEL_PROMPT.format(question=question), hits, GenerationConfig(max_new_tokens=8)).messages
    t = time.perf_counter()
    logits = pipeline.llm.next_token_logits(messages)
    seconds = time.perf_counter() - t
    scores = torch.tensor([float(torch.logsumexp(logits[label_ids[lab]], 0)) for lab in LABELS])
    probs = torch.softmax(scores, 0).tolist()
    return dict(zip(LABELS, probs)), seconds, int(pipeline.llm.encode_prompt(messages).shape[1])


def fit_label_bias(rows: list[dict], name: str) -> dict[str, float]:
    """Per-label log-biases (0 for the first label) that maximise the likelihood of the gold labels of
    `rows` under p(label) ∝ p_model(label) · e^bias: the label-prior correction of calibrate-before-use
    (Zhao et al., 2021), fitted on labelled train questions (two numbers per model)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    from ragkit.generation.evaluate import LABELS

    logp = np.log(np.array([[r[name]["probs"][lab] for lab in LABELS] for r in rows]) + 1e-12)
    gold = np.array([LABELS.index(r["gold"]) for r in rows])

    def nll(b):
        z = logp + np.concatenate([[0.0], b])
        return -(z[np.arange(len(gold)), gold] - logsumexp(z, axis=1)).mean()

    b = minimize(nll, np.zeros(len(LABELS) - 1), method="L-BFGS-B").x
    return dict(zip(LABELS, [0.0, *(round(float(v), 4) for v in b)]))


def calibrated(rows: list[dict], biases: dict[str, dict[str, float]]) -> list[dict]:
    """`rows` with each named model's label and confidence re-read from its bias-corrected probabilities."""
    out = []
    for r in rows:
        r = dict(r)
        for name, bias in biases.items():
            w = {lab: p * math.exp(bias[lab]) for lab, p in r[name]["probs"].items()}
            z = sum(w.values())
            label = max(w, key=w.get)
            r[name] = {**r[name], "label": label, "confidence": w[label] / z}
        out.append(r)
    return out


def cascade_rows(args) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Both models' label probabilities, seconds and prompt tokens on `--train-limit` train and `--limit`
    test questions (the same BM25 hits for both), cached in `--work`/cascade_rows.json and resumed from it."""
    import torch

    from ragkit.config import PipelineConfig
    from ragkit.data.corpus import load_beir_corpus, load_beir_judged
    from ragkit.generation.evaluate import _label_token_ids, load_answers
    from ragkit.generation.llm.hf import HFCausalLM
    from ragkit.generation.pipeline import Pipeline
    from ragkit.retrieval.index import Index, IndexConfig
    from common import require_datasets

    data = require_datasets() / "pubmedqa_labeled"
    answers = load_answers(data)
    cache = Path(args.work) / "cascade_rows.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("k") != args.k:
        saved = {"k": args.k, "train": [], "test": []}
    index = Index.build(load_beir_corpus(data), IndexConfig(retrievers=["bm25"]))
    models = {"small": HFCausalLM.from_pretrained("qwen2.5-coder-0.5b"), "big": HFCausalLM.from_pretrained("qwen2.5-coder-1.5b")}
    params = {name: sum(p.numel() for p in llm.model.parameters() if p.dtype != torch.int8) for name, llm in models.items()}
    config = PipelineConfig()
    config.retrieval.k = args.k
    pipes = {name: Pipeline(index, llm, config) for name, llm in models.items()}
    label_ids = _label_token_ids(models["small"].tokenizer)
    for split, limit in (("train", args.train_limit), ("test", args.limit)):
        judged, _ = load_beir_judged(data, split)
        rows = saved[split]
        done = {r["id"] for r in rows}
        for qid, question in list(judged.items())[:limit]:
            if qid in done:
                continue
            hits = pipes["small"].retrieve(question)
            row = {"id": qid, "gold": answers[qid]["final_decision"]}
            for name, pipe in pipes.items():
                probs, seconds, tokens = label_probs(pipe, question, hits, label_ids)
                row[name] = {"label": max(probs, key=probs.get), "confidence": max(probs.values()),
                             "probs": {k: round(v, 6) for k, v in probs.items()},
                             "s": round(seconds, 3), "prompt_tokens": tokens}
            rows.append(row)
            if len(rows) % 10 == 0:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(saved))
                tmp.replace(cache)
                print(split, len(rows), flush=True)
        saved[split] = rows[:limit]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(saved))
    return {"train": saved["train"], "test": saved["test"]}, params


def label_accuracy(rows: list[dict], name: str) -> float:
    """The share of `rows` whose model `name` chose the gold label."""
    return sum(r[name]["label"] == r["gold"] for r in rows) / len(rows)


def cascade_figures(splits: dict[str, list[dict]], params: dict[str, int], label: str) -> dict:
    """Threshold chosen on the train rows (the lowest escalation rate whose train accuracy is at least
    95% of the 1.5B's), then test accuracy, compute, the curve and an exact McNemar test vs the 1.5B."""
    from scipy.stats import binomtest

    def at(rows, threshold):
        """(accuracy, compute ratio by parameters x prompt tokens, seconds ratio, escalated share)."""
        correct = flops = secs = escalated = 0
        big_flops = sum(params["big"] * r["big"]["prompt_tokens"] for r in rows)
        big_secs = sum(r["big"]["s"] for r in rows)
        for r in rows:
            up = r["small"]["confidence"] < threshold
            escalated += up
            chosen = r["big" if up else "small"]
            correct += chosen["label"] == r["gold"]
            flops += params["small"] * r["small"]["prompt_tokens"] + (params["big"] * r["big"]["prompt_tokens"] if up else 0)
            secs += r["small"]["s"] + (r["big"]["s"] if up else 0)
        n = len(rows)
        return correct / n, flops / big_flops, secs / big_secs, escalated / n

    train, test = splits["train"], splits["test"]
    thresholds = sorted({0.0, 1.01} | {round(r["small"]["confidence"] + 1e-9, 6) for r in train})
    train_big = label_accuracy(train, "big")
    ok = [t for t in thresholds if at(train, t)[0] >= 0.95 * train_big]
    chosen = min(ok, key=lambda t: at(train, t)[3]) if ok else 1.01
    acc, compute, secs, escalated = at(test, chosen)
    big_acc, small_acc = label_accuracy(test, "big"), label_accuracy(test, "small")
    curve = []
    for t in (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.01):
        a, c, sec, e = at(test, t)
        curve.append({"threshold": t, "accuracy": round(a, 4), "compute_ratio": round(c, 4), "seconds_ratio": round(sec, 4),
                      "escalated": round(e, 4)})
    # paired test, cascade vs the 1.5B alone on the same questions (exact McNemar: a binomial test on the discordant pairs)
    casc_right = [(r["big"] if r["small"]["confidence"] < chosen else r["small"])["label"] == r["gold"] for r in test]
    big_right = [r["big"]["label"] == r["gold"] for r in test]
    b = sum(c and not g for c, g in zip(casc_right, big_right))
    c_ = sum(g and not c for c, g in zip(casc_right, big_right))
    p_value = binomtest(b, b + c_, 0.5).pvalue if b + c_ else 1.0
    rows = [[f"{t['threshold']:.2f}", t["accuracy"], t["compute_ratio"], t["seconds_ratio"], t["escalated"]] for t in curve]
    print(f"\n{label}")
    print(table(["threshold (0.5B confidence)", "accuracy", "compute ÷ 1.5B", "seconds ÷ 1.5B", "escalated"], rows))
    print(f"test, {len(test)} questions: 0.5B {small_acc:.3f}, 1.5B {big_acc:.3f}, cascade at {chosen:.3f} (chosen on "
          f"{len(train)} train questions) {acc:.3f} = {acc / big_acc:.3f} of the 1.5B at {compute:.3f} of its "
          f"compute ({secs:.3f} of its seconds), {escalated:.2%} escalated; McNemar p = {p_value:.3f}")
    return {"accuracy_ratio": round(acc / big_acc, 4), "compute_ratio": round(compute, 4), "seconds_ratio": round(secs, 4),
            "threshold": chosen, "threshold_chosen_on": f"{len(train)} PubMedQA train questions",
            "accuracy": {"small": round(small_acc, 4), "big": round(big_acc, 4), "cascade": round(acc, 4)},
            "escalated": round(escalated, 4), "questions": len(test), "p_value_vs_big": round(p_value, 4),
            "discordant": {"cascade_right_big_wrong": b, "big_right_cascade_wrong": c_}, "curve_on_test": curve}


def cascade(args) -> dict:
    """The 0.5B answers each PubMedQA question (yes/no/maybe, retrieval on); when its top label's
    probability is under a threshold the 1.5B answers instead. A model's label scores are first
    corrected by label biases fitted on train questions (the user's own labelled data; `fit_label_bias`)
    when that raises its 2-fold cross-validated train accuracy, and the threshold is chosen on the same
    train questions; test figures are read at that threshold, against the stronger 1.5B alone
    (corrected or not), and beside them the figures with neither model corrected."""
    splits, params = cascade_rows(args)
    train, test = splits["train"], splits["test"]
    raw = cascade_figures(splits, params, "uncalibrated (label scores as read)")
    # a model is calibrated when, in 2-fold cross-validation on the train questions, its biases fitted
    # on one half raise its accuracy on the other (maximum likelihood need not raise accuracy)
    halves = (train[: len(train) // 2], train[len(train) // 2:])
    fitted, cv = {}, {}
    for name in ("small", "big"):
        fitted[name] = fit_label_bias(train, name)
        cross = sum(label_accuracy(calibrated(b, {name: fit_label_bias(a, name)}), name) * len(b)
                    for a, b in (halves, halves[::-1]))
        cv[name] = {"raw": label_accuracy(train, name), "calibrated": cross / len(train)}
    biases = {name: fitted[name] for name in fitted if cv[name]["calibrated"] > cv[name]["raw"]}
    cal = {split: calibrated(rows, biases) for split, rows in splits.items()}
    out = cascade_figures(cal, params, f"calibrated on train ({', '.join(biases) or 'neither'}): label log-biases {biases}")
    # the peer is the stronger 1.5B on test, calibrated or not (so calibration cannot weaken the reference)
    big_all = {"uncalibrated": raw["accuracy"]["big"],
               "calibrated": label_accuracy(calibrated(test, {"big": fitted["big"]}), "big")}
    big_best = max(big_all.values())
    ratio = out["accuracy"]["cascade"] / big_best
    print(f"2-fold train accuracy, raw vs calibrated: {cv}; the 1.5B on test: {big_all}; "
          f"cascade ÷ the stronger 1.5B: {ratio:.3f} at {out['compute_ratio']:.3f} of its compute")
    return {**out, "accuracy_ratio": round(ratio, 4), "accuracy_ratio_vs_big_as_used": out["accuracy_ratio"],
            "big_accuracy_test": {k: round(v, 4) for k, v in big_all.items()},
            "calibration": {"label_log_biases": biases, "fitted_on": f"{len(train)} PubMedQA train questions",
                            "method": ("per-label log-bias maximising train likelihood (label-prior correction), applied "
                                       "to a model when it raises 2-fold cross-validated train accuracy"),
                            "cross_validated_train_accuracy": cv},
            "accuracy_ratio_means": "the cascade's test accuracy ÷ the stronger of the 1.5B alone calibrated or not",
            "uncalibrated": raw,
            "compute_means": "parameters x prompt tokens (one forward pass per answer: labels are read from the next token)",
            "retrieval": f"bm25, k {args.k}",
            "signal": "the 0.5B's probability of its top label (softmax over yes/no/maybe scores, after the label-bias correction)",
            "per_question": splits}


def whitebox(args) -> dict:
    """The contract fields of one domain (`knn`, `proxy`, `poe`, `contrastive`, `stacked`: gap_closed
    and speed_ratio) from the `ragkit adapter eval --json` files of the Qwen recipe (docs/adaptation.md):
    one or more (e.g. knn + proxy, scored stacked, in one; poe + contrastive in another), all of the
    same LLM, text, tokens, window and stride (checked). The LoRA reference's perplexity comes from
    the file that has one, or from `--reference-json` (an earlier eval of the same text)."""
    from ragkit.adaptation.evaluate import gap_closed

    domain = args.phase
    paths = [Path(p) for p in (args.eval_json or [RESULTS / f"qwen_pair_{domain}_adapters.json"])]
    for path in paths:
        if not path.is_file():
            sys.exit(f"no {path}: run the Qwen recipe of docs/adaptation.md first (ragkit adapter eval ... --json {path})")
    runs = [json.loads(p.read_text()) for p in paths]
    checked = list(zip(paths, runs))
    if args.reference_json:
        checked.append((Path(args.reference_json), json.loads(Path(args.reference_json).read_text())))
    same = ("llm", "tokens", "window", "stride")
    for path, r in checked[1:]:
        if any(r[k] != runs[0][k] for k in same) or abs(r["systems"]["base"]["ppl"] - runs[0]["systems"]["base"]["ppl"]) > 1e-3:
            sys.exit(f"{path}: not the same evaluation as {paths[0]} ({', '.join(same)} and the base perplexity must match)")
    lora_from, lora = next(((p, r) for p, r in checked if "lora" in r["systems"]), (None, None))
    if lora is None:
        sys.exit("no LoRA reference perplexity: give an eval with --lora, or --reference-json")
    base, lora_ppl = runs[0]["systems"]["base"]["ppl"], lora["systems"]["lora"]["ppl"]
    out = {"source": [p.name for p in paths], "llm": runs[0]["llm"], "lora": lora["lora"], "lora_ppl_from": lora_from.name,
           "tokens": runs[0]["tokens"], "threads": runs[0]["threads"], "ppl": {"base": base, "lora": lora_ppl}}
    out["systems"] = {}
    for r in runs:  # a kind met in a later file replaces the earlier one; `systems` keeps every one
        kinds = {a["name"]: a["kind"] for a in r["adapters"]}
        for name, m in r["systems"].items():
            key = "stacked" if "+" in name else kinds.get(name)
            if key not in ("knn", "proxy", "poe", "contrastive", "stacked"):
                continue
            finite = math.isfinite(m["ppl"])
            row = {"gap_closed": round(gap_closed(base, m["ppl"], lora_ppl) or 0.0, 4) if finite else None,
                   "speed_ratio": m.get("speed_ratio"), "ppl": m["ppl"] if finite else None,
                   "ppl_reduction": m["ppl_reduction"] if finite else None, "system": name}
            if not finite:
                row["note"] = ("infinite perplexity: the plausibility mask gives some test tokens probability 0"
                               if key == "contrastive" else "infinite perplexity")
            out["ppl"][name] = row["ppl"]
            out["systems"][name] = row
            out[key] = row
    print(json.dumps({k: v for k, v in out.items() if k != "ppl"}, indent=1))
    return out


def proxy_pair(args) -> dict:
    """Phase `proxy_pair`: the proxy adapter of the Qwen recipe (expert = the 0.5B LoRA, anti-expert =
    the untuned 0.5B) run as one batch of two through the 0.5B's weights (`lora_pair`, ragkit's
    default for such a pair) vs the same two models run apart (the peer: `paired: false`), each with
    the small models' step in line and run ahead on the second core beside the 1.5B's step (`overlap`,
    ragkit's default with one decode thread): greedy decode tokens/s of the 1.5B alone and with each
    (48 tokens, 3 repeats in alternating order, one decode thread), and the perplexity of the paired
    and apart proxy on the first `--check-tokens` tokens of the held-out text (they must agree)."""
    from ragkit.adaptation import load_adapter
    from ragkit.adaptation.evaluate import WindowScorer, decode_speed, perplexities
    from ragkit.generation.llm.hf import HFCausalLM

    text = Path(args.text).read_text(encoding="utf-8")
    llm = HFCausalLM.from_pretrained("qwen2.5-coder-1.5b")
    paired, apart = load_adapter(args.proxy), load_adapter(args.proxy, paired=False)
    pp, pa = paired.logits_processor(llm), apart.logits_processor(llm)
    if pp.pair is None:
        sys.exit(f"{args.proxy}: not run as a pair ({paired.paired_reason})")
    others = {Path(a).name: load_adapter(a) for a in args.also}  # e.g. the fitted poe / contrastive adapters
    t = time.perf_counter()
    ppl = perplexities(llm, text, {"base": [], "paired": [pp], "two_models": [pa]}, 512, 384, args.check_tokens + 1,
                       2, {}, True)
    eval_s = time.perf_counter() - t
    prompt = WindowScorer(llm, text, max_tokens=64).ids.unsqueeze(0)
    systems = {"base": [], "paired": [paired], "two_models": [apart]} | {n: [a] for n, a in others.items()}
    ahead = decode_speed(llm, systems, prompt, 48, 3, overlap=True)
    in_line = decode_speed(llm, systems, prompt, 48, 3, overlap=False)
    rows = {n: {"decode_tokens_per_s": ahead[n], "speed_ratio": round(ahead[n] / ahead["base"], 4),
                "decode_tokens_per_s_in_line": in_line[n], "speed_ratio_in_line": round(in_line[n] / in_line["base"], 4)}
            for n in ahead}
    for n in ("base", "paired", "two_models"):
        rows[n]["ppl_check"] = round(ppl[n], 4)
    print(table(["system", "decode tok/s (run ahead)", "speed ratio", "decode tok/s (in line)", "speed ratio (in line)"],
                [[n, r["decode_tokens_per_s"], r["speed_ratio"], r["decode_tokens_per_s_in_line"],
                  r["speed_ratio_in_line"]] for n, r in rows.items()]))
    print(f"perplexity on the first {ppl['_tokens']} tokens: paired {ppl['paired']:.4f}, apart {ppl['two_models']:.4f}")
    return {"method": " ".join(proxy_pair.__doc__.split("\n\n")[0].split()), "proxy": args.proxy,
            "alpha": paired.manifest.get("params", {}).get("alpha"), "check_tokens": ppl["_tokens"],
            "others": {n: {"kind": a.kind, "params": a.manifest.get("params", {}), "models": a.manifest.get("models")}
                       for n, a in others.items()},
            "systems": rows, "paired_vs_two_models_speed": round(ahead["paired"] / ahead["two_models"], 3),
            "ppl_paired_minus_apart": round(ppl["paired"] - ppl["two_models"], 6),
            "eval_seconds": round(eval_s, 1), "load1": round(__import__("os").getloadavg()[0], 2),
            "threads": {"perplexity": 2, "decode": 1, "side_thread": "one, when run ahead"}}


def pair_speed(args) -> dict:
    """Phase `pair_speed`: decode speed only, when the proxy recipe cannot be run whole. The expert is a
    LoRA of the 0.5B with the recipe's shape (r 16, every attention and MLP projection) after one
    training step on the pydocs train text (speed does not depend on how far it was trained); the
    1.5B greedy-decodes 48 tokens alone, with the proxy as one batch of two, and with the same two
    models apart (the peer), 3 repeats in alternating order, one torch thread."""
    from ragkit.adaptation import load_adapter
    from ragkit.adaptation.evaluate import WindowScorer, decode_speed
    from ragkit.adaptation.logits import create
    from ragkit.adaptation.train import finetune
    from ragkit.generation.llm.hf import HFCausalLM

    work = Path(args.work)
    lora = work / "q05-lora-1step"
    if not (lora / "manifest.json").is_file():
        finetune("qwen2.5-coder-0.5b", Path("corpora/pydocs-lm/train.txt").read_text(encoding="utf-8"), lora,
                 kind="lora", steps=1, block=256, batch=1, threads=2, progress=False)
    px = work / "q15-proxy-speed"
    if not (px / "manifest.json").is_file():
        create("proxy", px, {"expert": str(lora), "anti_expert": "qwen2.5-coder-0.5b"}, "qwen2.5-coder-1.5b",
               {"alpha": 0.5})
    llm = HFCausalLM.from_pretrained("qwen2.5-coder-1.5b")
    paired, apart = load_adapter(px), load_adapter(px, paired=False)
    if paired.logits_processor(llm).pair is None:
        sys.exit(f"{px}: not run as a pair ({paired.paired_reason})")
    text = Path(args.text).read_text(encoding="utf-8")
    prompt = WindowScorer(llm, text, max_tokens=64).ids.unsqueeze(0)
    tps = decode_speed(llm, {"base": [], "paired": [paired], "two_models": [apart]}, prompt, 48, 3)
    rows = {n: {"decode_tokens_per_s": v, "speed_ratio": round(v / tps["base"], 4)} for n, v in tps.items()}
    print(table(["system", "decode tok/s", "speed ratio"], [[n, r["decode_tokens_per_s"], r["speed_ratio"]]
                                                           for n, r in rows.items()]))
    return {"method": " ".join(pair_speed.__doc__.split("\n\n")[0].split())[len("Phase `pair_speed`: "):],
            "systems": rows, "paired_vs_two_models": round(tps["paired"] / tps["two_models"], 3),
            "threads": {"decode": 1}, "load1": round(__import__("os").getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["speculative", "cascade", "pydocs", "pubmed", "proxy_pair", "pair_speed"])
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "ragkit" / "bench-qwen"),
                    help="pair_speed: folder for its throw-away LoRA and proxy adapter; cascade: its resumable rows")
    ap.add_argument("--proxy", default="adapters/q15-pydocs-proxy", help="proxy_pair: the proxy adapter folder")
    ap.add_argument("--text", default="corpora/pydocs-lm/test.txt", help="proxy_pair: held-out text")
    ap.add_argument("--also", nargs="*", default=[], help="proxy_pair: more adapter folders to time beside (poe, ...)")
    ap.add_argument("--check-tokens", type=int, default=1024, help="proxy_pair: tokens of the paired-vs-apart perplexity check")
    ap.add_argument("--eval-json", nargs="*", default=None,
                    help="pydocs / pubmed: the `ragkit adapter eval --json` files of the Qwen recipe (default "
                         "bench/results/qwen_pair_DOMAIN_adapters.json)")
    ap.add_argument("--reference-json", default=None,
                    help="pydocs / pubmed: an earlier eval of the same text that holds the LoRA reference")
    ap.add_argument("--limit", type=int, default=200, help="cascade: test questions")
    ap.add_argument("--lookup", type=int, default=3, help="speculative: n-gram size of the prompt-lookup variant")
    ap.add_argument("--questions", type=int, default=len(QUESTIONS), help="speculative: the first N bench questions")
    ap.add_argument("--setting-questions", action="store_true",
                    help="speculative: run on SETTING_QUESTIONS (not the bench's; for choosing draft settings) and "
                         "write under speculative_settings")
    ap.add_argument("--train-limit", type=int, default=100, help="cascade: train questions to choose the threshold on")
    args = pydocs_generation_args(ap, lambda a: a.phase == "speculative")
    path = RESULTS / "qwen_pair.json"
    out = {"speculative": speculative, "cascade": cascade, "pydocs": whitebox, "pubmed": whitebox,
           "proxy_pair": proxy_pair, "pair_speed": pair_speed}[args.phase](args)
    res = json.loads(path.read_text()) if path.is_file() else {}  # read after the phase: others may have written
    res["speculative_settings" if getattr(args, "setting_questions", False) else args.phase] = out
    res["environment"] = environment()
    write_results("qwen_pair", res)


if __name__ == "__main__":
    main()
