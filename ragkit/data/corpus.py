"""Corpora: BEIR folders, JSON Lines files and folders of text/markdown/rst/html files.

Every loader returns a list of `Document`; nothing is written while reading, so a bad line fails the
whole load before any index is touched.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

from ragkit.errors import CorpusError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


@dataclass
class Document:
    """One source document before chunking."""

    id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What a folder load skipped, and why (skipping is the documented choice for folders)."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; errors name the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read file: {e.strerror or e}", str(path)) from e
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"not valid UTF-8 (byte {e.start})", str(path), lineno) from e
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"invalid JSON: {e.msg} (column {e.colno})", str(path), lineno) from e
        if not isinstance(obj, dict):
            raise CorpusError(f"expected a JSON object, got {type(obj).__name__}", str(path), lineno)
        yield lineno, obj


def _field(obj: dict, name: str, path: Path, lineno: int, required: bool = True) -> str:
    if name not in obj or obj[name] is None:
        if required:
            raise CorpusError(f"missing field {name!r}", str(path), lineno)
        return ""
    value = obj[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise CorpusError(f"field {name!r} must be a string, got {type(value).__name__}", str(path), lineno)
    return value


def load_jsonl(
    path: str | Path,
    id_field: str = "id",
    text_field: str = "text",
    title_field: str = "title",
    source_field: str | None = "source",
) -> list[Document]:
    """Read a JSON Lines corpus; `id_field`/`text_field` are required, title/source optional.

    Other fields are kept as metadata. Duplicate ids and an empty file are errors.
    """
    path = Path(path)
    docs: list[Document] = []
    seen: dict[str, int] = {}
    known = {id_field, text_field, title_field, source_field}
    for lineno, obj in _iter_jsonl(path):
        doc_id = _field(obj, id_field, path, lineno)
        if not doc_id.strip():
            raise CorpusError(f"field {id_field!r} is empty", str(path), lineno)
        if doc_id in seen:
            raise CorpusError(f"duplicate id {doc_id!r} (first seen on line {seen[doc_id]})", str(path), lineno)
        seen[doc_id] = lineno
        text = _field(obj, text_field, path, lineno)
        title = _field(obj, title_field, path, lineno, required=False)
        source = _field(obj, source_field, path, lineno, required=False) if source_field else ""
        meta = {k: v for k, v in obj.items() if k not in known}
        docs.append(Document(doc_id, text, title, source or f"{path.name}:{lineno}", meta))
    if not docs:
        raise CorpusError("corpus is empty (no JSON lines)", str(path))
    return docs


def load_beir_corpus(data_dir: str | Path) -> list[Document]:
    """The `corpus.jsonl` of a BEIR folder (`_id`, `title`, `text`)."""
    data_dir = Path(data_dir)
    return load_jsonl(data_dir / "corpus.jsonl", id_field="_id", text_field="text", title_field="title",
                      source_field=None)


def load_beir_queries(data_dir: str | Path) -> dict[str, str]:
    """BEIR `queries.jsonl` as {query id: text}."""
    path = Path(data_dir) / "queries.jsonl"
    if not path.exists():
        raise CorpusError("missing queries.jsonl", str(path))
    return {_field(o, "_id", path, n): _field(o, "text", path, n) for n, o in _iter_jsonl(path)}


def load_beir_qrels(data_dir: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """BEIR `qrels/<split>.tsv` (header `query-id corpus-id score`) as {qid: {docid: grade}}."""
    path = Path(data_dir) / "qrels" / f"{split}.tsv"
    if not path.exists():
        raise CorpusError(f"missing qrels file for split {split!r}", str(path))
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            if not line.strip():
                continue
            if len(parts) != 3:
                raise CorpusError(f"expected 3 tab-separated fields, got {len(parts)}", str(path), lineno)
            try:
                grade = int(parts[2])
            except ValueError as e:
                raise CorpusError(f"score {parts[2]!r} is not an integer", str(path), lineno) from e
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def load_beir_judged(data_dir: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries that have judgements in `qrels/<split>.tsv`, those qrels); no judged query is an error."""
    qrels = load_beir_qrels(data_dir, split)
    queries = {q: t for q, t in load_beir_queries(data_dir).items() if q in qrels}
    if not queries:
        raise CorpusError(f"no query of queries.jsonl has judgements in qrels/{split}.tsv", str(data_dir))
    return queries, qrels


class _HTMLText(HTMLParser):
    """HTML to plain text: drops script/style, keeps block structure as newlines, reads <title>."""

    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
             "table", "ul", "ol", "dt", "dd", "blockquote", "header", "footer"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Return (title, text) of an HTML page."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" *\n[ \n]*", "\n", text).strip()
    return parser.title.strip(), text


def _guess_title(path: Path, text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()[:5]]
    for i, ln in enumerate(lines):
        if ln.startswith("#"):
            return ln.lstrip("#").strip()
        if ln and i + 1 < len(lines) and set(lines[i + 1]) <= set("=-~^*+#") and len(lines[i + 1]) >= 3:
            return ln  # reStructuredText underlined title
    return path.stem


def load_folder(folder: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES,
                strict: bool = False, report: LoadReport | None = None) -> list[Document]:
    """Every .txt/.md/.rst/.html file under `folder`, recursively; ids are relative paths.

    Unreadable or non-UTF-8 files are skipped and counted in `report` (with a logged warning), or
    raise `CorpusError` when `strict`. An empty result is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError("not a folder", str(folder))
    report = report if report is not None else LoadReport()
    docs: list[Document] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        rel = path.relative_to(folder).as_posix()
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = f"not valid UTF-8 (byte {e.start})" if isinstance(e, UnicodeDecodeError) else f"unreadable: {e.strerror or e}"
            if strict:
                raise CorpusError(reason, str(path)) from e
            report.skipped.append((str(path), reason))
            log.warning("skipping %s: %s", path, reason)
            continue
        if path.suffix.lower() in (".html", ".htm"):
            title, text = html_to_text(text)
            title = title or path.stem
        else:
            title = _guess_title(path, text)
        docs.append(Document(rel, text, title, str(rel)))
    if not docs:
        raise CorpusError(f"no readable {'/'.join(suffixes)} files found"
                          + (f" ({report.n_skipped} skipped)" if report.n_skipped else ""), str(folder))
    return docs


def detect_format(path: str | Path) -> str:
    """'beir' for a folder with corpus.jsonl, 'jsonl' for a .jsonl file, 'folder' otherwise.

    A folder with BEIR's queries.jsonl or qrels/ but no corpus.jsonl is an error, not a folder of text
    files: it is a BEIR data set whose corpus is missing, and indexing its README alone is never meant.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError("no such file or folder", str(path))
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "beir"
        beir_parts = [name for name in ("queries.jsonl", "qrels") if (path / name).exists()]
        if beir_parts:
            raise CorpusError(f"looks like a BEIR folder (it has {' and '.join(beir_parts)}) but has no corpus.jsonl; "
                              "add the corpus, or pass --format folder to index its text files anyway", str(path))
        return "folder"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise CorpusError("unknown corpus format: give a BEIR folder, a .jsonl file or a folder of text files", str(path))


def load_corpus(path: str | Path, format: str = "auto", report: LoadReport | None = None, strict: bool = False,
                id_field: str = "id", text_field: str = "text", title_field: str = "title",
                source_field: str | None = "source") -> list[Document]:
    """Load any supported corpus (`format`: auto, beir, jsonl, folder).

    The `*_field` names apply to JSON Lines files; `strict` and `report` to folders.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "beir":
        return load_beir_corpus(path)
    if fmt == "jsonl":
        return load_jsonl(path, id_field, text_field, title_field, source_field)
    if fmt == "folder":
        return load_folder(path, strict=strict, report=report)
    raise CorpusError(f"unknown corpus format {format!r} (choose auto, beir, jsonl, folder)", str(path))


def check_unique_ids(docs: list[Document]) -> None:
    """Raise CorpusError naming the first duplicate document id."""
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise CorpusError(f"duplicate document id {d.id!r}")
        seen.add(d.id)
