#!/usr/bin/env python3
"""Corpus recipe: the Python documentation that every Python installation carries, as JSON Lines.

One document per language-reference topic of `pydoc_data.topics` (the pages behind `help('TOPIC')`)
and one per public standard-library module, rendered by `pydoc` as plain text. No text is copied into
the repository: it comes from the interpreter that runs this script. See corpora/README.md.

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

DEFAULT_MAX_CHARS = 30_000  # measured: ~2.0M characters, ~2,450 chunks of 256 tokens (README.md)
TIMEOUT_S = 120  # per top-level module with its submodules: one that blocks is killed and skipped
# Never imported: they act on import (browser, print, GUI, REPL) or are tests, demos, installers.
DENY = frozenset({
    "__main__", "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
    "idle_test", "ensurepip", "lib2to3", "pydoc_data", "xxsubtype", "xxlimited", "xxlimited_35",
    "distutils",  # deprecated (PEP 632), gone in 3.12, shadowed by setuptools' copy in most venvs
    "posix", "nt", "sre_compile", "sre_constants", "sre_parse",  # all in `os`; deprecated internals of `re`
})
DROP_SECTIONS = {"FILE", "MODULE REFERENCE"}  # this machine's path; a docs URL and boilerplate
RUNTIME_DATA = {"sys", "site"}  # their DATA is the renderer's own state (argv, sys.path): dropped

# Runs in a fresh `python -S -B` per top-level module, with a near-empty environment and a fixed hash
# seed: nothing it prints reaches us, site-packages cannot shadow the stdlib, os.environ holds no
# secrets to render, set reprs come out in the same order every run, and an import that blocks is
# killed. The job comes on stdin so that sys.argv (rendered by `sys`) holds nothing of ours.
_CHILD = r'''
import importlib, inspect, io, json, os, pkgutil, pydoc, sys, warnings
job, out = json.loads(sys.stdin.read()), os.fdopen(os.dup(1), "w", encoding="utf-8")
null = os.open(os.devnull, os.O_RDWR)
[os.dup2(null, fd) for fd in (0, 1, 2)]
sys.stdin = sys.stdout = sys.stderr = io.StringIO()
warnings.simplefilter("ignore")
deny, docs, skipped = set(job["deny"]), [], []

def render(name):
    try:
        mod = importlib.import_module(name)
        first = (inspect.getdoc(mod) or "").strip().split("\n")[0].strip()
        docs.append([name, first, pydoc.render_doc(mod, renderer=pydoc.plaintext)])
        return mod if hasattr(mod, "__path__") else None
    except BaseException as e:
        why = "not importable here" if isinstance(e, ImportError) else type(e).__name__
        skipped.append([name, "%s: %s" % (why, e)])

def walk(pkg):
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name not in deny:
            sub = render(pkg.__name__ + "." + info.name)
            if sub is not None:
                walk(sub)

pkg = render(job["name"])
if job["submodules"] and pkg is not None:
    walk(pkg)
json.dump({"docs": docs, "skipped": skipped}, out)
out.close()
'''


def _render(name: str, submodules: bool, cwd: str) -> tuple[list, list]:
    """Render one top-level module (and its submodules) in a child interpreter."""
    env = {"PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"}
    env.update({k: os.environ[k] for k in ("SYSTEMROOT",) if k in os.environ})  # Windows needs it
    job = json.dumps({"name": name, "submodules": submodules, "deny": sorted(DENY)}).encode()
    try:
        proc = subprocess.run([sys.executable, "-S", "-B", "-c", _CHILD], input=job, env=env, cwd=cwd,
                              capture_output=True, timeout=TIMEOUT_S)
        res = json.loads(proc.stdout.decode("utf-8"))
    except subprocess.TimeoutExpired:
        return [], [[name, f"timed out after {TIMEOUT_S}s"]]
    except ValueError:
        return [], [[name, f"renderer failed (exit status {proc.returncode})"]]
    return res["docs"], res["skipped"]


def _machine_paths(cwd: str) -> list[tuple[str, str]]:
    """(path, placeholder) pairs to scrub, longest first: the corpus names none of this machine's paths
    (system prefixes such as /usr are not this machine's and stay)."""
    home = os.path.expanduser("~").rstrip(os.sep)
    pairs = {home + os.sep: "~" + os.sep} if home and home != "~" else {}
    for name in ("cwd", "base_exec_prefix", "exec_prefix", "base_prefix", "prefix"):  # last one wins
        path = cwd if name == "cwd" else getattr(sys, name)
        tag = "<cwd>" if name == "cwd" else f"<sys.{name}>"
        pairs.update({p: tag for p in (path, os.path.realpath(path)) if p not in ("/", "/usr", "/usr/local")})
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub(text: str, paths: list[tuple[str, str]]) -> str:
    """Remove object addresses and os.environ contents; replace machine paths by placeholders."""
    text = re.sub(r"( at 0x|, handle )[0-9a-fA-F]{6,}", "", text)
    text = re.sub(r"\benviron\(\{[^{}]*\}\)", "os.environ", text)
    for path, placeholder in paths:
        text = text.replace(path, placeholder)
    return text


_CLASS_SECTION = re.compile(r"^(.*\|  )[A-Z][\w ]* (defined here|inherited from [^:]+):$")
_DUNDER = re.compile(r"__\w+__\b")


def _drop_dunders(body: list[str], prefix: str) -> list[str]:
    """Drop `__x__` members whose doc is at most one line (slot wrappers: 'Return self<value.')."""
    out, i = [], 0
    while i < len(body):
        j = i + 1
        while j < len(body) and body[j].startswith(prefix + "    "):
            j += 1
        if _DUNDER.match(body[i], len(prefix)) and j - i <= 2:
            i = j + (j < len(body) and body[j].rstrip() == prefix.rstrip())
            continue
        out.extend(body[i:j])
        i = j
    return out


def clean(text: str, paths: list[tuple[str, str]], drop: set[str] = DROP_SECTIONS) -> str:
    """Scrub pydoc's plain text; drop its title line, the `drop` sections, members inherited by
    classes (documented at their base), boilerplate dunder members and the rules between sections."""
    lines, out, skip = scrub(text, paths).splitlines(), [], False
    if lines and lines[0].startswith("Python Library Documentation:"):
        lines = lines[1:]
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"[A-Z][A-Z ]*", line):
            skip = line in drop
        m = _CLASS_SECTION.match(line)
        if m and not skip:
            prefix, j = m.group(1), i + 1
            while j < len(lines) and lines[j].startswith(prefix.rstrip()) and not lines[j].endswith("-" * 70):
                j += 1
            body = [] if m.group(2) != "defined here" else _drop_dunders(lines[i + 1:j], prefix)
            if any(b.strip(" |") for b in body):
                out += [line] + [b.rstrip() for b in body]
            i = j
            continue
        if not skip and not re.fullmatch(r".*\|  -{70}", line):
            out.append(line.rstrip())
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def truncate(text: str, max_chars: int | None, module: bool = False) -> str:
    """Cap `text` at `max_chars` characters, cut at a line boundary, with a marker line. A module's
    FUNCTIONS section goes first (after NAME and DESCRIPTION): classes are usually the bulk."""
    if not max_chars or len(text) <= max_chars:
        return text
    if module:
        parts = re.split(r"(?m)^(?=[A-Z][A-Z ]*$)", text)
        rank = {"NAME": 0, "DESCRIPTION": 1, "FUNCTIONS": 2}
        parts.sort(key=lambda s: rank.get(s.split("\n", 1)[0], 3))
        text = "\n\n".join(p.strip("\n") for p in parts if p.strip())
    marker = "\n[... truncated]\n"
    keep = max(max_chars - len(marker), 0)
    cut = text.rfind("\n", 0, keep)
    return text[: cut if cut > 0 else keep].rstrip() + marker


def build_pydocs_corpus(out_path: str | Path, submodules: bool = False, max_chars: int | None = None) -> dict:
    """Write the corpus to `out_path` (JSON Lines, atomically) and return stats. `max_chars`: cap on
    each document's text; None means DEFAULT_MAX_CHARS, 0 means no cap."""
    from pydoc_data.topics import topics

    start, out_path = time.perf_counter(), Path(out_path)
    cap = DEFAULT_MAX_CHARS if max_chars is None else max_chars
    docs = {f"topic:{name}": {"id": f"topic:{name}", "title": f"{name} (language reference topic)",
                              "text": truncate(text.strip() + "\n", cap), "source": f"pydoc_data.topics:{name}"}
            for name, text in topics.items()}
    public = sorted(n for n in sys.stdlib_module_names if not n.startswith("_"))
    skipped = [[name, "deny list: never imported"] for name in public if name in DENY]
    with tempfile.TemporaryDirectory() as cwd, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        paths = _machine_paths(cwd)
        names = [name for name in public if name not in DENY]
        for rendered, failed in pool.map(lambda name: _render(name, submodules, cwd), names):
            skipped += [[name, scrub(reason, paths)] for name, reason in failed]
            for name, first, text in rendered:
                drop = DROP_SECTIONS | ({"DATA"} if name in RUNTIME_DATA else set())
                docs[f"module:{name}"] = {"id": f"module:{name}",
                                          "title": f"{name} — {scrub(first, paths)}" if first else name,
                                          "text": truncate(clean(text, paths, drop), cap, module=True),
                                          "source": f"pydoc:{name}"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(docs[key], ensure_ascii=False) + "\n" for key in sorted(docs))
        os.replace(tmp, out_path)
    except BaseException:
        os.unlink(tmp)
        raise
    sizes = sorted(((len(d["text"]), key) for key, d in docs.items()), reverse=True)
    return {"documents": len(docs), "topics": len(topics), "modules": len(docs) - len(topics),
            "chars": sum(s for s, _ in sizes), "max_chars": cap or None,
            "truncated": sum(d["text"].endswith("[... truncated]\n") for d in docs.values()),
            "largest": [[key, s] for s, key in sizes[:10]], "skipped": sorted(skipped),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    """CLI: build the corpus and print a one-line summary (--verbose: skips and largest documents)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output .jsonl file")
    ap.add_argument("--submodules", action="store_true", help="also document submodules (os.path, email.message, ...)")
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                    help=f"cap on each document's text (default {DEFAULT_MAX_CHARS}; 0 = no cap)")
    ap.add_argument("--verbose", action="store_true", help="list skipped modules and the largest documents")
    args = ap.parse_args(argv)
    stats = build_pydocs_corpus(args.out, args.submodules, args.max_chars)
    if args.verbose:
        print(*[f"skipped {name}: {why}" for name, why in stats["skipped"]],
              *[f"largest {name}: {size:,} chars" for name, size in stats["largest"]], sep="\n", file=sys.stderr)
    print(f"{args.out}: {stats['documents']} documents ({stats['topics']} topics, {stats['modules']} modules), "
          f"{stats['chars']:,} chars, {stats['truncated']} truncated at {stats['max_chars'] or 'no cap'}, "
          f"{len(stats['skipped'])} modules skipped (--verbose lists them), {stats['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
