"""Shared helpers for bench scripts: where the data sets live, result files, tables."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def datasets_dir() -> Path:
    """`RAGKIT_DATASETS` or ../shared/datasets beside the checkout."""
    return Path(os.environ.get("RAGKIT_DATASETS", ROOT.parent / "shared" / "datasets"))


def require_datasets() -> Path:
    d = datasets_dir()
    if not d.is_dir():
        sys.exit(f"data sets not found at {d}: set RAGKIT_DATASETS to the folder of BEIR sets")
    return d


def load_set(name: str):
    """(documents, judged query texts) of a shared BEIR set."""
    from ragkit.data.corpus import load_beir_corpus, load_beir_judged

    data = require_datasets() / name
    return load_beir_corpus(data), list(load_beir_judged(data)[0].values())


def pydocs_generation_args(ap, needs_index=lambda args: True) -> object:
    """`--index` (default the demo's indexes/pydocs), `--max-new-tokens`, `-k`, parsed; exits with
    the fix when the index is missing and `needs_index(args)`."""
    ap.add_argument("--index", default=str(ROOT / "indexes" / "pydocs"))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args()
    if needs_index(args):
        require_index(args.index)
    return args


def require_index(index: str) -> None:
    if not (Path(index) / "manifest.json").exists():
        sys.exit(f"no index at {index}: run `make demo` first (it builds indexes/pydocs) or pass --index")


def read_baselines(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Rows of BASELINES.md's results table: {(set, system): {nDCG@10, R@100, RR@10}}."""
    rows = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\|\s*(\w+)\s*\|\s*([^|]+?)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = {"nDCG@10": float(m.group(3)), "R@100": float(m.group(4)),
                                              "RR@10": float(m.group(5))}
    return rows


def environment() -> dict:
    import torch

    from ragkit.runtime import native_bf16

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
            "torch_threads": torch.get_num_threads(), "load1_at_end": round(os.getloadavg()[0], 2),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(name: str, report) -> Path:
    """Write a `ragkit.report.Report` as bench/results/<name>.html (self-contained: opens offline)."""
    path = report.write(RESULTS / f"{name}.html")
    print(f"wrote {path.relative_to(ROOT)}")
    return path
