#!/usr/bin/env python3
"""Corpus recipe: the Python documentation that every Python installation carries, as JSON Lines.

One document per language-reference topic of `pydoc_data.topics` (the pages behind `help('TOPIC')`)
and one per public standard-library module, rendered by `pydoc` as plain text. No text is copied into
the repository: it comes from the interpreter that runs this script.

    python corpora/pydocs.py corpora/pydocs/corpus.jsonl [--submodules] [--max-chars N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_MAX_CHARS = 20_000  # measured: keeps the default corpus near 2.5M characters (see README)
TIMEOUT_S = 120  # per top-level module (with its submodules); a module that blocks is killed and skipped
# Never imported: they act on import (browser, print, GUI, REPL), or are tests, demos or installers.
DENY = frozenset({
    "__main__", "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
    "idle_test", "ensurepip", "lib2to3", "pydoc_data", "xxsubtype", "xxlimited", "xxlimited_35",
    "distutils",  # deprecated (PEP 632), gone in 3.12, shadowed by setuptools' copy in most venvs
})
DROP_SECTIONS = {"FILE", "MODULE REFERENCE"}  # machine paths; a docs URL plus boilerplate
RUNTIME_DATA = {"sys", "site"}  # their DATA is the renderer's own state (argv, sys.path, prefixes): dropped

# Runs in a fresh `python -S -B` per top-level module, with a near-empty environment and a fixed hash
# seed: nothing it prints reaches us, site-packages cannot shadow the stdlib, os.environ holds no
# secrets to render, set reprs are ordered the same every run, and an import that blocks is killed.
_CHILD = r'''
import importlib, inspect, io, json, os, pkgutil, pydoc, sys, warnings
job = json.loads(sys.stdin.read())
out = os.fdopen(os.dup(1), "w", encoding="utf-8")
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
sys.stdin = sys.stdout = sys.stderr = io.StringIO()
warnings.simplefilter("ignore")
deny, docs, skipped = set(job["deny"]), [], []

def render(name):
    try:
        mod = importlib.import_module(name)
        first = (inspect.getdoc(mod) or "").strip().split("\n")[0].strip()
        docs.append([name, first, pydoc.render_doc(mod, renderer=pydoc.plaintext)])
        return mod
    except ImportError as e:
        skipped.append([name, "not importable here: %s" % e])
    except BaseException as e:
        skipped.append([name, "%s: %s" % (type(e).__name__, e)])

def walk(pkg):
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in deny:
            continue
        mod = render(pkg.__name__ + "." + info.name)
        if info.ispkg and mod is not None and hasattr(mod, "__path__"):
            walk(mod)

mod = render(job["name"])
if job["submodules"] and mod is not None and hasattr(mod, "__path__"):
    walk(mod)
json.dump({"docs": docs, "skipped": skipped}, out)
out.close()
'''


def _render(name: str, submodules: bool, cwd: str) -> tuple[list, list]:
    """Render one top-level module (and its submodules) in a child interpreter."""
    env = {"PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"}
    env.update({k: os.environ[k] for k in ("SYSTEMROOT",) if k in os.environ})  # Windows needs it
    job = json.dumps({"name": name, "submodules": submodules, "deny": sorted(DENY)})
    try:
        proc = subprocess.run([sys.executable, "-S", "-B", "-c", _CHILD], input=job.encode(), env=env,
                              cwd=cwd, capture_output=True, timeout=TIMEOUT_S)
        res = json.loads(proc.stdout.decode("utf-8"))
    except subprocess.TimeoutExpired:
        return [], [[name, f"timed out after {TIMEOUT_S}s"]]
    except ValueError:
        return [], [[name, f"renderer failed (exit status {proc.returncode})"]]
    return res["docs"], res["skipped"]


def _machine_paths(cwd: str) -> list[tuple[str, str]]:
    """(path, placeholder) pairs to scrub, longest first, so the corpus names none of this machine's paths."""
    pairs = {}
    for name in ("base_exec_prefix", "base_prefix", "exec_prefix", "prefix"):
        for p in {getattr(sys, name), os.path.realpath(getattr(sys, name))}:
            pairs.setdefault(p, f"<sys.{name}>")
    pairs.update({cwd: "<cwd>", os.path.realpath(cwd): "<cwd>"})
    home = os.path.expanduser("~")
    if home not in ("", "/", "~"):
        pairs.setdefault(home, "~")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


_INHERITED = re.compile(r"^(.*\|  )[A-Z][\w ]* inherited from [^:]+:$")


def scrub(text: str, paths: list[tuple[str, str]]) -> str:
    """Replace object addresses, os.environ contents and machine paths (run-to-run noise, secrets)."""
    text = re.sub(r"( at 0x|, handle )[0-9a-fA-F]{6,}", "", text)
    text = re.sub(r"\benviron\(\{[^{}]*\}\)", "os.environ", text)
    for path, placeholder in paths:
        text = text.replace(path, placeholder)
    return text


def clean(text: str, paths: list[tuple[str, str]], drop: set[str] = DROP_SECTIONS) -> str:
    """Scrub pydoc's plain text; drop its title line, the `drop` sections and inherited-member blocks."""
    lines = scrub(text, paths).splitlines()
    if lines and lines[0].startswith("Python Library Documentation:"):
        lines = lines[1:]
    out: list[str] = []
    i, skip = 0, False
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"[A-Z][A-Z ]*", line):
            skip = line in drop
        m = _INHERITED.match(line)
        if skip:
            i += 1
            continue
        if m:  # skip to the next rule of this class, or to the end of the class
            rule, inner = m.group(1) + "-" * 70, m.group(1).rstrip()
            if out and out[-1] == rule:
                out.pop()
            i += 1
            while i < len(lines) and lines[i].startswith(inner) and lines[i] != rule:
                i += 1
            continue
        out.append(line.rstrip())
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def truncate(text: str, max_chars: int | None) -> str:
    """Cap `text` at `max_chars` characters, cut at a line boundary, with a marker line."""
    if not max_chars or len(text) <= max_chars:
        return text
    marker = "\n[... truncated]\n"
    cut = text.rfind("\n", 0, max(max_chars - len(marker), 0))
    return text[: cut if cut > 0 else max_chars - len(marker)].rstrip() + marker


def module_names() -> list[str]:
    """Public top-level standard-library modules, minus the deny list, sorted."""
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in DENY)


def build_pydocs_corpus(out_path: str | Path, submodules: bool = False,
                        max_chars: int | None = DEFAULT_MAX_CHARS) -> dict:
    """Write the corpus to `out_path` (JSON Lines, atomically); return stats."""
    from pydoc_data.topics import topics

    start, out_path = time.perf_counter(), Path(out_path)
    docs: dict[str, dict] = {}
    for name, text in topics.items():
        docs[f"topic:{name}"] = {"id": f"topic:{name}", "title": f"{name} (language reference topic)",
                                 "text": truncate(text.strip() + "\n", max_chars),
                                 "source": f"pydoc_data.topics:{name}"}
    skipped: list[list[str]] = []
    with tempfile.TemporaryDirectory() as cwd:
        paths = _machine_paths(cwd)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = pool.map(lambda n: _render(n, submodules, cwd), module_names())
            for rendered, failed in results:
                skipped.extend([name, scrub(reason, paths)] for name, reason in failed)
                for name, first, text in rendered:
                    drop = DROP_SECTIONS | ({"DATA"} if name in RUNTIME_DATA else set())
                    docs[f"module:{name}"] = {"id": f"module:{name}",
                                              "title": f"{name} — {scrub(first, paths)}" if first else name,
                                              "text": truncate(clean(text, paths, drop), max_chars),
                                              "source": f"pydoc:{name}"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for key in sorted(docs):
                f.write(json.dumps(docs[key], ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
    except BaseException:
        os.unlink(tmp)
        raise
    sizes = sorted(((len(d["text"]), k) for k, d in docs.items()), reverse=True)
    return {"documents": len(docs), "topics": len(topics), "modules": len(docs) - len(topics),
            "chars": sum(s for s, _ in sizes), "largest": [[k, s] for s, k in sizes[:10]],
            "skipped": sorted(skipped), "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    """CLI: build the corpus and print a one-line summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output .jsonl file")
    ap.add_argument("--submodules", action="store_true", help="also document submodules (os.path, email.message, ...)")
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                    help=f"cap each document's text (default {DEFAULT_MAX_CHARS}; 0 = no cap)")
    ap.add_argument("--verbose", action="store_true", help="list skipped modules and the largest documents")
    args = ap.parse_args(argv)
    stats = build_pydocs_corpus(args.out, args.submodules, args.max_chars or None)
    if args.verbose:
        for name, reason in stats["skipped"]:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        for name, size in stats["largest"]:
            print(f"largest {name}: {size} chars", file=sys.stderr)
    print(f"{args.out}: {stats['documents']} documents ({stats['topics']} topics, {stats['modules']} modules), "
          f"{stats['chars']:,} chars, {len(stats['skipped'])} skipped, {stats['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
