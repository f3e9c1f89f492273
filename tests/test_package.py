"""The package as a whole: no import cycle among ragkit's modules, the public API importable from the
top, and the CLI's help (a BM25-only command's path too) free of torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ragkit

PACKAGE = Path(ragkit.__file__).resolve().parent


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree: ast.Module, name: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import run when the module is imported: module-level
    statements, also inside module-level `if`/`try`/`with`, not `if TYPE_CHECKING:` and not
    anything inside a function or class body (the lazy imports)."""
    out: list[tuple[str, list[str]]] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import):
                out.extend((a.name, []) for a in s.names)
            elif isinstance(s, ast.ImportFrom):
                base = s.module or ""
                if s.level:  # relative: resolved against this module's package
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (s.level - 1)]
                    base = ".".join(pkg + ([s.module] if s.module else []))
                out.append((base, [a.name for a in s.names]))
            elif isinstance(s, ast.If):
                test = s.test
                if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    visit(s.orelse)
                    continue
                visit(s.body)
                visit(s.orelse)
            elif isinstance(s, ast.Try):
                visit(s.body)
                for h in s.handlers:
                    visit(h.body)
                visit(s.orelse)
                visit(s.finalbody)
            elif isinstance(s, (ast.With, ast.For, ast.While)):
                visit(s.body)
    visit(tree.body)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports at module level."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = set()
        for module, names in module_level_imports(tree, name, path.name == "__init__.py"):
            submodules = {f"{module}.{n}" for n in names} & set(files)
            edges |= submodules  # `from ragkit.cli import console`: needs the submodule only
            if module in files and (not names or len(submodules) < len(names)):
                edges.add(module)  # `import X`, or a name defined in X itself
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_no_import_cycle_among_ragkit_modules():
    graph = import_graph()
    assert len(graph) > 40 and "ragkit.cli.console" in graph  # the scan sees the whole package
    found = cycles(graph)
    assert not found, "import cycles (module-level imports): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_scan_finds_a_cycle_when_there_is_one(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import leaf\nVALUE = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("from pkg.sub import other\n")  # a submodule: not the package
    (pkg / "sub" / "other.py").write_text("def f():\n    from pkg import VALUE\n")  # lazy: not counted
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.sub.leaf"}, "pkg.sub": set(), "pkg.sub.leaf": {"pkg.sub.other"},
                     "pkg.sub.other": set()} and cycles(graph) == []
    (pkg / "sub" / "other.py").write_text("from pkg import VALUE\n")  # a name of the package: a real cycle
    assert cycles(import_graph(pkg)) == [["pkg", "pkg.sub.leaf", "pkg.sub.other"]]
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\ntry:\n    from .z import w\nexcept ImportError:\n"
                     "    pass\ndef f():\n    import lazy\n")
    assert module_level_imports(tree, "ragkit.p.m", False) == [("x", []), ("ragkit.p.z", ["w"])]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)


def test_public_api_imports_from_the_top():
    r = run_python("from ragkit import Index, Pipeline, PipelineConfig, load_adapter, train_adapter; "
                   "print(Index.__name__, Pipeline.__name__, PipelineConfig.__name__, callable(load_adapter), "
                   "callable(train_adapter))")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["Index", "Pipeline", "PipelineConfig", "True", "True"]


def imported_modules(stderr: str) -> set[str]:
    """The modules a `python -X importtime` run imported."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_cli_import_and_help_do_not_import_torch():
    r = run_python("import sys, ragkit.cli; sys.exit('torch' in sys.modules)")
    assert r.returncode == 0, "importing ragkit.cli pulled in torch" + r.stderr[-3000:]
    for args in (["--help"], ["adapter", "--help"], ["colbert", "--help"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ragkit", *args], capture_output=True,
                           text=True, timeout=120, cwd=PACKAGE.parent)
        assert r.returncode == 0 and "Usage" in r.stdout, r.stderr[-3000:]
        modules = imported_modules(r.stderr)
        assert "ragkit.cli" in modules, "the -X importtime listing was not read"
        assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, f"ragkit {' '.join(args)} imported torch"
