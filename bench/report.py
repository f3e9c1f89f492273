"""Render the HTML reports of the committed bench results, without re-running anything: each JSON in
bench/results/ that one of ragkit's reports knows becomes bench/results/<name>.html beside it
(self-contained: tables and inline SVG plots, opens offline).

usage: python bench/report.py [NAME ...]    (default: every known result file present)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_report  # noqa: E402


def build(name: str, result: dict):
    """The report of result file `name`, or None when no report knows its shape."""
    from ragkit.report import adapter_report, qa_report, retrieval_report

    if name == "quality":
        from quality import report

        return report(result)
    if name == "colbert_quality":
        return retrieval_report(result["sets"], "ColBERT beside BM25, dense and hybrid", result.get("note", ""))
    if "systems" in result and all("ppl" in s for s in result["systems"].values()):
        return adapter_report(result, f"Domain adapters ({name})")
    if "conditions" in result:
        return qa_report(result, f"QA evaluation ({name})")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="result names (file stems in bench/results)")
    args = ap.parse_args()
    paths = [RESULTS / f"{n}.json" for n in args.names] if args.names else sorted(RESULTS.glob("*.json"))
    for path in paths:
        if not path.exists():
            sys.exit(f"no result file {path}")
        report = build(path.stem, json.loads(path.read_text()))
        if report is None:
            if args.names:
                sys.exit(f"{path.name}: no report knows this result's shape")
            continue
        write_report(path.stem, report)


if __name__ == "__main__":
    main()
