#!/usr/bin/env python3
"""Corpus recipe: Python-docs domain text for language-model adapters, split by topic group with a
leak check (see ragkit/adapters/domain.py). Writes train.txt, valid.txt, test.txt and split.json.

    python corpora/pydocs_lm.py [corpora/pydocs-lm]
"""
from __future__ import annotations

import json
import sys

from ragkit.data.splits import write_split

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "corpora/pydocs-lm"
    report = write_split(out)
    brief = {k: {kk: vv for kk, vv in v.items() if kk != "names"} for k, v in report["splits"].items()}
    print(json.dumps({"groups": report["groups"], "splits": brief, "overlap": report["overlap"],
                      "overlap_valid_test": report["overlap_valid_test"]}, indent=2))
