"""`ragkit index / search / add / delete / info`: build, query and maintain an index folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ragkit.errors import RagkitError
from ragkit.runtime import QUERY_THREADS, torch_threads
from ragkit.cli.console import _fail, _safe, _split, _waiting, err, out


def index(
    corpus: Path = typer.Argument(..., help="BEIR folder, .jsonl file, or folder of .txt/.md/.rst/.html files."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Index folder to write (replaced atomically)."),
    store: Optional[str] = typer.Option(None, "--store", help="Or a PostgreSQL store to write: postgresql://user@host:port/"
                                        "db?schema=NAME (password from PGPASSWORD; docs/stores.md)."),
    format: str = typer.Option("auto", help="auto, beir, jsonl or folder."),
    id_field: str = typer.Option("id", help="JSONL: field holding the document id."),
    text_field: str = typer.Option("text", help="JSONL: field holding the text."),
    title_field: str = typer.Option("title", help="JSONL: field holding the title (optional)."),
    retrievers: str = typer.Option("bm25,dense", help="Comma-separated: bm25, dense, colbert."),
    encoder: str = typer.Option("default", help="Sentence-transformers model: hub id or local folder."),
    chunk_tokens: int = typer.Option(256, help="Tokens per chunk (title and special tokens included)."),
    overlap: int = typer.Option(32, help="Tokens shared by consecutive chunks."),
    dense_index: str = typer.Option("flat", help="flat (exact), hnsw or ivfpq."),
    colbert_checkpoint: str = typer.Option("default", help="ColBERT checkpoint folder or hub id ('default': untrained MiniLM)."),
    colbert_engine: str = typer.Option("exact", help="ColBERT index engine: exact (float16 vectors, exact MaxSim) or "
                                       "plaid (colbert-ai's compressed PLAID index; pip install 'ragkit[colbert]')."),
    colbert_nbits: int = typer.Option(2, help="ColBERT engine plaid: residual bits per dimension (1, 2 or 4)."),
    bm25_method: str = typer.Option("lucene", help="lucene, robertson, atire, bm25l, bm25+ or okapi (rank-bm25)."),
    stopwords: str = typer.Option("en", help="Stop-word list for BM25 ('en' or 'none')."),
    stemmer: str = typer.Option("english", help="Snowball stemmer for BM25 ('english', ... or 'none')."),
    strict: bool = typer.Option(False, help="Folders: fail on unreadable/non-UTF-8 files instead of skipping them."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing --out, wait for it instead of failing."),
    ray: bool = typer.Option(False, "--ray", help="Chunk and encode on a Ray cluster (Ray Data; pip install 'ragkit[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray: the cluster's address "
                                              "(default: a local in-process cluster)."),
) -> None:
    """Chunk and index a corpus into a folder (absent, empty, or an index to replace; never the corpus) or
    a PostgreSQL store (--store)."""
    from ragkit.data.corpus import LoadReport, load_corpus
    from ragkit.retrieval.index import Index, IndexConfig
    from ragkit.data.chunking import ChunkingConfig
    from ragkit.retrieval.stores.vectors import FaissConfig
    from ragkit.retrieval.bm25 import BM25Config
    from ragkit.retrieval.dense import DenseConfig
    from ragkit.retrieval.colbert.exact import ColBERTConfig
    from ragkit.retrieval.encoder import DEFAULT_ENCODER

    try:
        config = IndexConfig(
            retrievers=_split(retrievers), encoder=DEFAULT_ENCODER if encoder == "default" else encoder,
            chunking=ChunkingConfig(chunk_tokens, overlap),
            bm25=BM25Config(method=bm25_method, stopwords=None if stopwords == "none" else stopwords,
                            stemmer=None if stemmer == "none" else stemmer),
            dense=DenseConfig(index=FaissConfig(kind=dense_index)),
            colbert=ColBERTConfig(checkpoint=colbert_checkpoint, engine=colbert_engine, nbits=colbert_nbits))
        if (out_dir is None) == (store is None):
            raise RagkitError("give the index's location: --out FOLDER or --store postgresql://... (one of the two)")
        target = store or out_dir
        Index.check_output(target, protect=[corpus])  # before the build; save checks again
        with Index.writer_lock(target, wait=wait, on_wait=_waiting(target)):
            report = LoadReport()
            with err.status(f"reading {_safe(corpus)}"):
                docs = load_corpus(corpus, format, report=report, strict=strict, id_field=id_field,
                                   text_field=text_field, title_field=title_field)
            if report.n_skipped:
                err.print(f"[yellow]warning:[/] skipped {report.n_skipped} file(s):")
                for path, reason in report.skipped[:20]:
                    err.print(f"  {_safe(path)}: {_safe(reason)}")
            err.print(f"read {len(docs)} documents from {_safe(corpus)}")
            with err.status("loading models"):
                idx = Index(config)
            if ray or ray_address:
                from ragkit.retrieval.distributed import on_ray, ray_cluster

                with err.status(f"starting Ray ({_safe(ray_address or 'local cluster')})"):
                    cluster = ray_cluster(ray_address)
                    cluster.__enter__()
                try:
                    with on_ray(idx):
                        idx.add(docs, show_progress=True)
                finally:
                    cluster.__exit__(None, None, None)
            else:
                idx.add(docs, show_progress=True)
            with err.status(f"saving {_safe(idx_location(target))}"):
                idx.save(target, protect=[corpus])
    except (RagkitError, ValueError) as e:
        _fail(e)
    c = idx.info()["counts"]
    times = ", ".join(f"{k} {v:.1f}s" for k, v in idx.timings.items())
    out.print(f"[green]indexed[/] {c['documents']} documents as {c['chunks']} chunks into "
              f"{_safe(idx_location(target))} ({times})")


def idx_location(location) -> str:
    """How an index location is shown: a folder as given, a store URL without credentials."""
    from ragkit.retrieval.stores.base import open_store

    try:
        return open_store(location).display
    except (RagkitError, ValueError):
        return str(location)


def _load(index_dir: str, only: list[str] | None = None):
    from ragkit.retrieval.index import Index

    try:
        with err.status(f"loading {_safe(idx_location(index_dir))}"):
            return Index.load(index_dir, only=only)
    except (RagkitError, ValueError) as e:
        _fail(e)


def search(
    query: str = typer.Argument(..., help="What to look for."),
    index_dir: str = typer.Option(..., "--index", "-i", help="Index folder or postgresql:// store URL."),
    k: int = typer.Option(10, "-k", help="Number of hits."),
    retriever: Optional[str] = typer.Option(None, help="bm25, dense, colbert or hybrid (default: hybrid when several exist)."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON lines."),
) -> None:
    """Search an index and print ranked hits with their sources."""
    # one retriever: load just it (BM25 needs no encoder and no torch); hybrid: what the index has
    idx = _load(index_dir, only=[retriever] if retriever and retriever != "hybrid" else None)
    try:
        with torch_threads(QUERY_THREADS if idx.needs_torch(retriever) else None):
            hits = idx.search(query, k=k, retriever=retriever)
    except ValueError as e:
        _fail(e)
    if as_json:
        for h in hits:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
        return
    out.print(f"[bold]{_safe(query)}[/]  ({_safe(retriever or idx.default_retriever)}, {len(hits)} hits)")
    for h in hits:
        snippet = " ".join(h.text.split())
        snippet = snippet[:220] + ("…" if len(snippet) > 220 else "")
        out.print(f"[bold cyan]{h.rank:>2}.[/] [bold]{_safe(h.title or h.doc_id)}[/]", overflow="ellipsis", no_wrap=True)
        out.print(f"    [dim]{_safe(h.chunk_id)} · {_safe(h.source)} · chars {h.start}-{h.end} · score {h.score:.4f}[/]")
        out.print(f"    {_safe(snippet)}", highlight=False)


def add(
    index_dir: str = typer.Argument(..., help="Index folder or postgresql:// store URL to update."),
    corpus: Path = typer.Argument(..., help="Documents to add (any corpus format)."),
    replace: bool = typer.Option(False, help="Replace documents whose ids are already indexed."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing the index, wait for it instead of failing."),
) -> None:
    """Add documents to an index; what is indexed already is not re-encoded."""
    from ragkit.data.corpus import load_corpus
    from ragkit.retrieval.index import Index
    from ragkit.retrieval.stores.base import open_store

    try:
        open_store(index_dir).read_manifest()  # a clear error for a missing or foreign index, before locking
        with Index.writer_lock(index_dir, wait=wait, on_wait=_waiting(index_dir)):  # load -> add -> save
            idx = _load(index_dir)
            n = idx.add(load_corpus(corpus), replace=replace, show_progress=True)
            idx.save(index_dir, protect=[corpus])
    except RagkitError as e:
        _fail(e)
    out.print(f"[green]added[/] {n} chunks; index now holds {idx.info()['counts']}")


def delete(
    index_dir: str = typer.Argument(..., help="Index folder or postgresql:// store URL to update."),
    doc_ids: list[str] = typer.Argument(..., help="Document ids to remove."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing the index, wait for it instead of failing."),
) -> None:
    """Delete documents (all their chunks) from an index."""
    from ragkit.retrieval.index import Index
    from ragkit.retrieval.stores.base import open_store

    try:
        open_store(index_dir).read_manifest()
        with Index.writer_lock(index_dir, wait=wait, on_wait=_waiting(index_dir)):  # load -> delete -> save
            idx = _load(index_dir)
            try:
                n = idx.delete(doc_ids)
            except KeyError as e:
                _fail(Exception(e.args[0]))
            idx.save(index_dir)
    except RagkitError as e:
        _fail(e)
    out.print(f"[green]deleted[/] {len(doc_ids)} documents ({n} chunks); index now holds {idx.info()['counts']}")


def info(
    index_dir: str = typer.Argument(..., help="Index folder or postgresql:// store URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Check every file against the size and sha256 recorded "
                                "in the manifest (a load checks sizes, and hashes only files up to 64 MiB)."),
) -> None:
    """Show an index's manifest: encoder, chunking, counts, retrievers, dates."""
    from ragkit.errors import IndexFormatError
    from ragkit.integrity import FILES, check_files
    from ragkit.fs import read_manifest
    from ragkit.retrieval.stores.base import is_store_url, open_store

    try:
        m = open_store(index_dir).read_manifest() if is_store_url(index_dir) else read_manifest(index_dir)
    except (RagkitError, ValueError) as e:
        _fail(e)
    if verify and is_store_url(index_dir):
        err.print("[yellow]note:[/] --verify checks folder files; a PostgreSQL store's integrity is the database's")
    elif verify:
        if FILES not in m:
            err.print(f"[yellow]warning:[/] {_safe(index_dir)} records no file checksums (written before they existed): "
                      "nothing to verify; saving it again records them")
        else:
            problems = check_files(index_dir, m, full=True)
            if problems:
                for p in problems[1:]:
                    err.print(f"[bold red]damaged:[/] {_safe(p)}", soft_wrap=True)
                _fail(IndexFormatError(f"{len(problems)} damaged file(s) in {index_dir}: {problems[0]}"))
            total = sum(f.get("bytes", 0) for f in m[FILES].values())
            err.print(f"[green]verified[/] {len(m[FILES])} files ({total / 1e6:.1f} MB): sizes and sha256 match "
                      "the manifest")
    if as_json:
        print(json.dumps(m, indent=2))
        return
    try:
        _info_table(index_dir, m)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        _fail(IndexFormatError(f"{index_dir}/manifest.json is damaged: a field is missing or of the wrong type "
                               f"({e!r})"))


def _info_table(index_dir: Path, m: dict) -> None:
    t = Table(title=_safe(idx_location(index_dir)), show_header=False)
    t.add_row("ragkit", _safe(f"{m['ragkit_version']} (format {m['format_version']})"))
    t.add_row("created / updated", _safe(f"{m['created']} / {m['updated']}"))
    t.add_row("documents / chunks", _safe(f"{m['counts']['documents']} / {m['counts']['chunks']}"))
    enc = m.get("encoder", {})
    t.add_row("encoder", _safe(f"{enc.get('id')} (dim {enc.get('dimension', '-')})"))
    ch = m["chunking"]
    if "store" in m:
        st = m["store"]
        t.add_row("store", _safe(f"PostgreSQL schema {st['schema']}, dense search "
                                 f"{'HNSW (m=%d, ef_construction=%d)' % (st['m'], st['ef_construction']) if st['hnsw'] else 'exact'}"))
    t.add_row("chunking", _safe(f"{ch['chunk_tokens']} tokens, overlap {ch['overlap']} ({ch['tokenizer']})"))
    for name, r in m["retrievers"].items():
        detail = (f"{r['method']} k1={r['k1']} b={r['b']} stopwords={r['stopwords']} stemmer={r['stemmer']}"
                  if name == "bm25" else ("pgvector" if "store" in m else f"faiss {r['index']['kind']}") if name == "dense"
                  else f"{r['engine']}{' %d-bit' % r.get('nbits', 2) if r['engine'] == 'plaid' else ''}, checkpoint "
                       f"{r['model']['id']} (dim {r['model']['dim']}), {r['tokens']} token vectors")
        t.add_row(_safe(name), _safe(detail))
    out.print(t)
