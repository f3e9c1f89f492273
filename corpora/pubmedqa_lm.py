#!/usr/bin/env python3
"""Corpus recipe: biomedical domain text for language-model adapters from PubMedQA (PQA-L) contexts.
train.txt and valid.txt: the passages judged for the questions of `qrels/train.tsv` (valid: every
tenth of them); test.txt: the passages of the official test split (`qrels/test.tsv`). Writes
split.json with the counts and the leak check (shared ids, identical texts, word 8-gram overlap of
the test passages with the training ones); refuses to write when the splits share a passage.

    python corpora/pubmedqa_lm.py [DATA_DIR] [corpora/pubmedqa-lm]

DATA_DIR defaults to ../shared/datasets/pubmedqa_labeled (or $RAGKIT_DATASETS/pubmedqa_labeled).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ragkit.adaptation.knowledge import split_overlap
from ragkit.data.corpus import load_beir_corpus, load_beir_judged

ROOT = Path(__file__).resolve().parents[1]


def passages(data: Path, split: str, docs: dict[str, str]) -> list[str]:
    """The judged passages of `split`, in the order of their document ids (stable across runs)."""
    _, qrels = load_beir_judged(data, split)
    ids = sorted({d for ds in qrels.values() for d in ds if d in docs}, key=lambda d: (len(d), d))
    return [docs[d] for d in ids]


def main(data: Path, out: Path) -> dict:
    overlap = split_overlap(data, "train", "test")
    if overlap["shared_ids"] or overlap["identical_texts"]:
        raise SystemExit(f"{data}: the train and test passages overlap ({overlap}); refusing to write the split")
    docs = {d.id: d.text for d in load_beir_corpus(data)}
    train = passages(data, "train", docs)
    texts = {"train": [t for i, t in enumerate(train) if i % 10 != 9],
             "valid": [t for i, t in enumerate(train) if i % 10 == 9],
             "test": passages(data, "test", docs)}
    out.mkdir(parents=True, exist_ok=True)
    report = {"source": str(data.name), "splits": {}, "overlap_train_test": overlap}
    for name, items in texts.items():
        text = "\n\n".join(items) + "\n"
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        report["splits"][name] = {"passages": len(items), "characters": len(text)}
    (out / "split.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    default = Path(os.environ.get("RAGKIT_DATASETS", ROOT.parent / "shared" / "datasets")) / "pubmedqa_labeled"
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not (data / "corpus.jsonl").is_file():
        raise SystemExit(f"{data}: no corpus.jsonl (give the PubMedQA BEIR folder)")
    print(json.dumps(main(data, Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "corpora" / "pubmedqa-lm"),
                     indent=2))
