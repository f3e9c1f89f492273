"""A ColBERT trained by `ragkit colbert train` on one shared set vs the untrained MiniLM default, both
with the exact engine, scored on the set's test queries (nDCG@10, R@100, RR@10).

usage: python bench/colbert_train.py SET [--checkpoint DIR] [--steps 150] [--batch-size 8] ...
Without --checkpoint it trains first (synthetic triples from the corpus, or qrels/train.tsv when the
set has one) into indexes/colbert-SET (git-ignored). The untrained figure is taken from
bench/results/colbert_quality.json when that run has the set, else measured here.
Writes bench/results/colbert_trained.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, environment, require_datasets, table, write_results  # noqa: E402

from ragkit.evaluate import evaluate_beir  # noqa: E402
from ragkit.index import IndexConfig  # noqa: E402
from ragkit.retrieve.colbert import ColBERTConfig  # noqa: E402

NOTE = ("measured on 2 shared CPU cores while other jobs (tests, training) were running: "
        "seconds are noisy and pessimistic; nDCG/R/RR are exact")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set")
    ap.add_argument("--checkpoint", type=Path, help="an already trained checkpoint (its training.json is reported)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--doc-maxlen", type=int, default=128)
    ap.add_argument("--freeze-layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    data = require_datasets() / args.set
    ckpt = args.checkpoint
    if ckpt is None:
        from ragkit.corpus import load_beir_corpus
        from ragkit.train_colbert import TrainConfig, beir_triples, synthesize_triples, train_colbert

        ckpt = ROOT / "indexes" / f"colbert-{args.set}"
        docs = load_beir_corpus(data)
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, doc_maxlen=args.doc_maxlen,
                             freeze_layers=args.freeze_layers, threads=args.threads, query_augmentation=False)
        triples = (beir_triples(data) if (data / "qrels" / "train.tsv").is_file()
                   else synthesize_triples(docs, config.steps * config.batch_size))
        train_colbert(triples, ckpt, config, corpus_texts=[d.text for d in docs], log=print)
    training = json.loads((ckpt / "training.json").read_text())
    training.pop("losses", None)

    t0 = time.perf_counter()
    trained = evaluate_beir(data, ["colbert"], config=IndexConfig(colbert=ColBERTConfig(checkpoint=str(ckpt))))["colbert"]
    print(f"trained: {trained} ({time.perf_counter() - t0:.0f}s)", flush=True)
    quality = RESULTS / "colbert_quality.json"
    untrained = None
    if quality.exists():  # the same evaluation of the default, from bench/colbert.py
        untrained = json.loads(quality.read_text())["sets"].get(args.set, {}).get("colbert")
    if untrained is None:
        untrained = evaluate_beir(data, ["colbert"])["colbert"]
    rows = [["untrained MiniLM (default)", untrained["nDCG@10"], untrained["R@100"], untrained["RR@10"]],
            ["trained (ragkit colbert train)", trained["nDCG@10"], trained["R@100"], trained["RR@10"]]]
    print(table([f"{args.set}: colbert exact", "nDCG@10", "R@100", "RR@10"], rows))
    print(f"trained − untrained nDCG@10: {trained['nDCG@10'] - untrained['nDCG@10']:+.4f} "
          f"(ratio {trained['nDCG@10'] / untrained['nDCG@10']:.3f}); training on {training['threads']} thread(s)")
    write_results("colbert_trained", {"set": args.set, "untrained": untrained, "trained": trained,
                                      "delta_nDCG@10": round(trained["nDCG@10"] - untrained["nDCG@10"], 4),
                                      "checkpoint": str(ckpt.name), "training": training, "note": NOTE,
                                      "environment": environment()})


if __name__ == "__main__":
    main()
