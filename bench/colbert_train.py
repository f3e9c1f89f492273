"""A ColBERT trained by `ragkit colbert train` on one shared set vs the untrained MiniLM default, both
with the exact engine, scored on the set's test queries (nDCG@10, R@100, RR@10) in one run.

usage: python bench/colbert_train.py SET [--checkpoint DIR] [--teacher hybrid] [--init identity] ...
Without --checkpoint it trains first into indexes/colbert-SET (git-ignored): from the corpus alone
(synthetic pseudo-queries; with --teacher, scored by the BM25 + dense teacher) or from
qrels/train.tsv when the set has one and no --teacher is given. Training never reads the test
queries or test qrels. The untrained default is measured in the same run (--reuse-untrained takes
it from bench/results/colbert_quality.json instead). Writes bench/results/colbert_trained.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, environment, require_datasets, table, write_results  # noqa: E402

from ragkit.retrieval.evaluate import evaluate_beir  # noqa: E402
from ragkit.retrieval.index import IndexConfig  # noqa: E402
from ragkit.retrieval.colbert.exact import ColBERTConfig  # noqa: E402

NOTE = ("measured on 2 CPU cores shared with other heavy jobs (load averages below): seconds are noisy and "
        "pessimistic; nDCG/R/RR are exact")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--checkpoint", type=Path, help="an already trained checkpoint (its training.json is reported)")
    ap.add_argument("--teacher", default=None, help="distil this teacher ('hybrid') on synthetic pseudo-queries")
    ap.add_argument("--init", default="pca", choices=["pca", "identity"])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--projection-lr", type=float, default=1e-4)
    ap.add_argument("--doc-maxlen", type=int, default=None)
    ap.add_argument("--freeze-layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse-untrained", action="store_true")
    args = ap.parse_args()
    data = require_datasets() / args.set
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    ckpt = args.checkpoint
    if ckpt is None:
        from ragkit.data.corpus import load_beir_corpus
        from ragkit.retrieval.colbert.train import (TrainConfig, beir_triples, synthesize_distillation, synthesize_triples,
                                          train_colbert)

        ckpt = ROOT / "indexes" / f"colbert-{args.set}"
        docs = load_beir_corpus(data)
        config = TrainConfig(init=args.init, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             projection_lr=args.projection_lr, doc_maxlen=args.doc_maxlen,
                             freeze_layers=args.freeze_layers, temperature=args.temperature, threads=args.threads,
                             query_augmentation=False)
        import torch

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        n = config.steps * config.batch_size
        if args.teacher:
            examples = synthesize_distillation(docs, n, candidates=args.candidates, teacher=args.teacher)
        elif (data / "qrels" / "train.tsv").is_file():
            examples = beir_triples(data)
        else:
            examples = synthesize_triples(docs, n)
        synth_s = round(time.perf_counter() - t0, 1)
        print(f"{len(examples)} examples in {synth_s}s", flush=True)
        train_colbert(examples, ckpt, config, corpus_texts=[d.text for d in docs], log=print)
        training_data = (f"{len(examples)} synthetic pseudo-queries from {args.set}'s corpus only"
                         + (f", {args.teacher} teacher scores" if args.teacher else ", BM25 hard negatives")
                         if args.teacher or not (data / "qrels" / "train.tsv").is_file()
                         else f"{args.set}'s qrels/train.tsv") + "; no test query or test qrel was read"
    else:
        synth_s, training_data = None, "given checkpoint (see its training.json)"
    training = json.loads((ckpt / "training.json").read_text())
    training.pop("losses", None)
    load["after_training"] = [round(x, 2) for x in os.getloadavg()]

    t0 = time.perf_counter()
    trained = evaluate_beir(data, ["colbert"], config=IndexConfig(colbert=ColBERTConfig(checkpoint=str(ckpt))))["colbert"]
    print(f"trained: {trained} ({time.perf_counter() - t0:.0f}s)", flush=True)
    untrained, source = None, "measured in this run"
    quality = RESULTS / "colbert_quality.json"
    if args.reuse_untrained and quality.exists():  # the same evaluation of the default, from bench/colbert.py
        untrained = json.loads(quality.read_text())["sets"].get(args.set, {}).get("colbert")
        source = "bench/results/colbert_quality.json"
    if untrained is None:
        untrained = evaluate_beir(data, ["colbert"])["colbert"]
        print(f"untrained: {untrained}", flush=True)
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    rows = [["untrained MiniLM (default)", untrained["nDCG@10"], untrained["R@100"], untrained["RR@10"]],
            ["trained (ragkit colbert train)", trained["nDCG@10"], trained["R@100"], trained["RR@10"]]]
    print(table([f"{args.set}: colbert exact", "nDCG@10", "R@100", "RR@10"], rows))
    print(f"trained − untrained nDCG@10: {trained['nDCG@10'] - untrained['nDCG@10']:+.4f} "
          f"(ratio {trained['nDCG@10'] / untrained['nDCG@10']:.3f}); training on {training['threads']} thread(s)")
    write_results("colbert_trained", {"set": args.set, "untrained": untrained, "untrained_source": source,
                                      "trained": trained,
                                      "delta_nDCG@10": round(trained["nDCG@10"] - untrained["nDCG@10"], 4),
                                      "checkpoint": str(ckpt.name), "training_data": training_data,
                                      "synthesis_s": synth_s, "training": training,
                                      "command": "python bench/colbert_train.py " + " ".join(sys.argv[1:]),
                                      "loadavg_1_5_15": load, "note": NOTE, "environment": environment()})


if __name__ == "__main__":
    main()
