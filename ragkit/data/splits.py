"""Domain text for training and evaluating adapters: a leak-checked train / validation / test split.

The Python-docs recipe uses the language-reference topics of `pydoc_data.topics` (every Python ships
them). The topics repeat each other verbatim (`specialnames` contains `customization` and
`attribute-access`; `compound` contains `if`, `while`, `try`, ...), so a split by topic alone leaks
held-out text into training (a leaky split made kNN-LM look 4x too good in a prototype). Here topics
that share any long line (> 60 characters after stripping) are joined into one group (union-find),
whole groups go to one split, and the residual overlap is measured and reported: the share of the
held-out word 8-grams that also occur in the training text, and the number of held-out long lines
found verbatim in training (0 by construction).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

LONG_LINE = 60
NGRAM = 8


def _long_lines(text: str) -> set[str]:
    return {s for s in (line.strip() for line in text.splitlines()) if len(s) > LONG_LINE}


def word_ngrams(text: str, n: int = NGRAM, lower: bool = False) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` (words: runs of non-space characters) — ragkit's one leak
    measure between training and held-out text."""
    words = (text.lower() if lower else text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def group_by_shared_lines(docs: dict[str, str]) -> list[list[str]]:
    """Groups of document names such that no long line occurs in two groups (union-find)."""
    parent = {k: k for k in docs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    for name in sorted(docs):
        for line in _long_lines(docs[name]):
            if line in owner:
                parent[find(name)] = find(owner[line])
            else:
                owner[line] = name
    groups: dict[str, list[str]] = {}
    for name in sorted(docs):
        groups.setdefault(find(name), []).append(name)
    return sorted(groups.values(), key=lambda g: g[0])


def overlap_report(train: str, held_out: str) -> dict:
    """How much of `held_out` is found in `train`: word 8-gram share and verbatim long lines."""
    tr, ho = word_ngrams(train), word_ngrams(held_out)
    tl = _long_lines(train)
    hl = _long_lines(held_out)
    return {"ngram": NGRAM, "held_out_ngrams": len(ho), "shared_ngrams": len(ho & tr),
            "shared_ngram_share": round(len(ho & tr) / max(1, len(ho)), 4),
            "held_out_long_lines": len(hl), "long_lines_in_train": len(hl & tl)}


def split_docs(docs: dict[str, str], valid_frac: float = 0.1, test_frac: float = 0.15,
               seed: str = "ragkit") -> dict[str, list[str]]:
    """Assign whole groups (see `group_by_shared_lines`) to train / valid / test, about the given
    shares of characters; the order is a fixed hash of the group names (reproducible). Groups larger
    than half a held-out share always go to training."""
    if not (0 < valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(f"the validation and test shares must be between 0 and 1 and leave room for training; "
                         f"got --valid {valid_frac} and --test {test_frac}")
    total = sum(len(v) for v in docs.values())
    groups = group_by_shared_lines(docs)
    size = {g[0]: sum(len(docs[n]) for n in g) for g in groups}
    order = sorted(groups, key=lambda g: hashlib.sha256((seed + g[0]).encode()).hexdigest())
    out = {"train": [], "valid": [], "test": []}
    filled = {"valid": 0, "test": 0}
    want = {"valid": valid_frac * total, "test": test_frac * total}
    for g in order:
        placed = False
        for split in ("test", "valid"):
            if size[g[0]] <= 0.5 * want[split] and filled[split] + size[g[0]] <= want[split] * 1.1:
                out[split] += g
                filled[split] += size[g[0]]
                placed = True
                break
        if not placed:
            out["train"] += g
    return {k: sorted(v) for k, v in out.items()}


def python_docs_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def write_split(out_dir: str | Path, docs: dict[str, str] | None = None, valid_frac: float = 0.1,
                test_frac: float = 0.15, source: str | None = None) -> dict:
    """Write `train.txt`, `valid.txt`, `test.txt` (documents joined by blank lines) and `split.json`
    (topic names per split, sizes, overlap report) under `out_dir`; returns the split.json dict.
    Without `docs`, the Python docs topics; `source` names where the documents came from."""
    if source is None:
        source = "pydoc_data.topics" if docs is None else "given documents"
    docs = python_docs_topics() if docs is None else docs
    if not docs:
        raise ValueError("no documents to split")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split_docs(docs, valid_frac, test_frac)
    texts = {k: "\n\n".join(docs[n].strip() for n in names) + "\n" for k, names in split.items()}
    for k, t in texts.items():
        (out / f"{k}.txt").write_text(t, encoding="utf-8")
    report = {"source": source,
              "groups": len(group_by_shared_lines(docs)),
              "splits": {k: {"documents": len(v), "chars": len(texts[k]), "names": v} for k, v in split.items()},
              "overlap": {k: overlap_report(texts["train"], texts[k]) for k in ("valid", "test")},
              "overlap_valid_test": overlap_report(texts["valid"], texts["test"])}
    (out / "split.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def read_text(path: str | Path) -> str:
    """A text file, or the `train/valid/test.txt` concatenation conventions: plain UTF-8 read."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder: give a text file (e.g. {p}/test.txt)")
    return p.read_text(encoding="utf-8")
