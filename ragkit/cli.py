"""The `ragkit` command line: a thin layer over the Python API (no logic lives here)."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import RagkitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ragkit: retrieval and domain adapters that make an LLM good at your domain.")
out = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


# C0 and C1 control characters (ESC starts ANSI/OSC sequences that retitle, recolour or clear the
# terminal) and the bidirectional overrides; newline and tab are kept in multi-line text only.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _safe(value, lines: bool = False) -> str:
    """Text from an index, a corpus or an error, made safe to print with rich: control characters
    shown as visible escapes (`\\x1b`), rich markup escaped. `lines` keeps newlines and tabs."""
    def visible(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    return escape((_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(visible, str(value)))


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {_safe(e, lines=True)}", soft_wrap=True)
    raise typer.Exit(2)


def _waiting(path: Path):
    """on_wait for the writer lock: say whom we wait for."""
    return lambda pid: err.print(f"waiting for {'process %s' % pid if pid else 'another writer'} to finish "
                                 f"writing {_safe(path)}")


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


@app.callback()
def main() -> None:
    """ragkit: retrieval and domain adapters that make an LLM good at your domain."""
    _quiet_libraries()


from .cli_colbert import app as colbert_app  # noqa: E402 - `ragkit colbert train|info`

app.add_typer(colbert_app, name="colbert")


@app.command()
def index(
    corpus: Path = typer.Argument(..., help="BEIR folder, .jsonl file, or folder of .txt/.md/.rst/.html files."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced atomically)."),
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
) -> None:
    """Chunk and index a corpus into a folder (absent, empty, or an index to replace; never the corpus)."""
    from .corpus import LoadReport, load_corpus
    from .index import Index, IndexConfig
    from .chunking import ChunkingConfig
    from .indexes.vectors import FaissConfig
    from .retrieve.bm25 import BM25Config
    from .retrieve.dense import DenseConfig
    from .retrieve.colbert import ColBERTConfig
    from .models.encoder import DEFAULT_ENCODER

    try:
        config = IndexConfig(
            retrievers=_split(retrievers), encoder=DEFAULT_ENCODER if encoder == "default" else encoder,
            chunking=ChunkingConfig(chunk_tokens, overlap),
            bm25=BM25Config(method=bm25_method, stopwords=None if stopwords == "none" else stopwords,
                            stemmer=None if stemmer == "none" else stemmer),
            dense=DenseConfig(index=FaissConfig(kind=dense_index)),
            colbert=ColBERTConfig(checkpoint=colbert_checkpoint, engine=colbert_engine, nbits=colbert_nbits))
        Index.check_output(out_dir, protect=[corpus])  # before the build; save checks again
        with Index.writer_lock(out_dir, wait=wait, on_wait=_waiting(out_dir)):
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
            idx.add(docs, show_progress=True)
            with err.status(f"saving {_safe(out_dir)}"):
                idx.save(out_dir, protect=[corpus])
    except (RagkitError, ValueError) as e:
        _fail(e)
    c = idx.info()["counts"]
    times = ", ".join(f"{k} {v:.1f}s" for k, v in idx.timings.items())
    out.print(f"[green]indexed[/] {c['documents']} documents as {c['chunks']} chunks into {_safe(out_dir)} ({times})")


def _load(index_dir: Path):
    from .index import Index

    try:
        with err.status(f"loading {_safe(index_dir)}"):
            return Index.load(index_dir)
    except RagkitError as e:
        _fail(e)


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for."),
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index folder."),
    k: int = typer.Option(10, "-k", help="Number of hits."),
    retriever: Optional[str] = typer.Option(None, help="bm25, dense, colbert or hybrid (default: hybrid when several exist)."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON lines."),
) -> None:
    """Search an index and print ranked hits with their sources."""
    _query_threads()
    idx = _load(index_dir)
    try:
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


@app.command()
def add(
    index_dir: Path = typer.Argument(..., help="Index folder to update."),
    corpus: Path = typer.Argument(..., help="Documents to add (any corpus format)."),
    replace: bool = typer.Option(False, help="Replace documents whose ids are already indexed."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing the index, wait for it instead of failing."),
) -> None:
    """Add documents to an index; what is indexed already is not re-encoded."""
    from .corpus import load_corpus
    from .index import Index
    from .indexes.store import read_manifest

    try:
        read_manifest(index_dir)  # a clear error for a missing or foreign index, before locking
        with Index.writer_lock(index_dir, wait=wait, on_wait=_waiting(index_dir)):  # load -> add -> save
            idx = _load(index_dir)
            n = idx.add(load_corpus(corpus), replace=replace, show_progress=True)
            idx.save(index_dir, protect=[corpus])
    except RagkitError as e:
        _fail(e)
    out.print(f"[green]added[/] {n} chunks; index now holds {idx.info()['counts']}")


@app.command()
def delete(
    index_dir: Path = typer.Argument(..., help="Index folder to update."),
    doc_ids: list[str] = typer.Argument(..., help="Document ids to remove."),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing the index, wait for it instead of failing."),
) -> None:
    """Delete documents (all their chunks) from an index."""
    from .index import Index
    from .indexes.store import read_manifest

    try:
        read_manifest(index_dir)
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


@app.command()
def info(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Check every file against the size and sha256 recorded "
                                "in the manifest (a load checks sizes, and hashes only files up to 64 MiB)."),
) -> None:
    """Show an index's manifest: encoder, chunking, counts, retrievers, dates."""
    from .errors import IndexFormatError
    from .indexes.integrity import FILES, check_files
    from .indexes.store import read_manifest

    try:
        m = read_manifest(index_dir)
    except RagkitError as e:
        _fail(e)
    if verify:
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
    t = Table(title=_safe(index_dir), show_header=False)
    t.add_row("ragkit", _safe(f"{m['ragkit_version']} (format {m['format_version']})"))
    t.add_row("created / updated", _safe(f"{m['created']} / {m['updated']}"))
    t.add_row("documents / chunks", _safe(f"{m['counts']['documents']} / {m['counts']['chunks']}"))
    enc = m.get("encoder", {})
    t.add_row("encoder", _safe(f"{enc.get('id')} (dim {enc.get('dimension', '-')})"))
    ch = m["chunking"]
    t.add_row("chunking", _safe(f"{ch['chunk_tokens']} tokens, overlap {ch['overlap']} ({ch['tokenizer']})"))
    for name, r in m["retrievers"].items():
        detail = (f"{r['method']} k1={r['k1']} b={r['b']} stopwords={r['stopwords']} stemmer={r['stemmer']}"
                  if name == "bm25" else f"faiss {r['index']['kind']}" if name == "dense"
                  else f"{r['engine']}{' %d-bit' % r.get('nbits', 2) if r['engine'] == 'plaid' else ''}, checkpoint "
                       f"{r['model']['id']} (dim {r['model']['dim']}), {r['tokens']} token vectors")
        t.add_row(_safe(name), _safe(detail))
    out.print(t)


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question."),
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder (overrides the config's)."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML file."),
    k: Optional[int] = typer.Option(None, "-k", help="Sources to retrieve."),
    retriever: Optional[str] = typer.Option(None, help="bm25, dense or hybrid."),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id or local folder (backend hf), or the endpoint's model."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer, in tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole answer (text, sources, citations) as JSON."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """Answer a question from an index with an LLM, streaming the answer, then its cited sources."""
    try:
        pipeline = _pipeline(config_file, index_dir, k, retriever, llm, max_new_tokens, adapter)
        stream = pipeline.stream(question)
        for piece in stream:
            if not as_json:
                out.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
    except (RagkitError, ValueError) as e:
        _fail(e)
    answer = stream.answer
    if as_json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return
    _print_sources(answer)


def _config_with_adapters(config_file, adapters):
    """The YAML config (or defaults) with the command line's --adapter entries appended."""
    from .config import PipelineConfig, adapter_specs

    config = PipelineConfig.from_yaml(config_file) if config_file else PipelineConfig()
    if adapters:
        adapter_specs(list(adapters), "--adapter")
        config.adapters = list(config.adapters or []) + list(adapters)
    return config


def _query_threads() -> None:
    """Query-time thread policy: one torch thread (queries and decoding; prompt prefill asks for its
    own `llm.prefill_threads`). Two OpenMP threads on 2 busy cores made a 40 ms query take ~1 s."""
    import torch

    torch.set_num_threads(1)


def _pipeline(config_file, index_dir, k, retriever, llm, max_new_tokens, adapters=None):
    """A Pipeline from an optional YAML file plus command-line overrides."""
    from .pipeline import Pipeline

    _query_threads()

    config = _config_with_adapters(config_file, adapters)
    if index_dir:
        config.index = str(index_dir)
    if k:
        config.retrieval.k = k
    if retriever:
        config.retrieval.retriever = retriever
    if llm:
        config.llm.model = llm
    if max_new_tokens:
        config.generation.max_new_tokens = max_new_tokens
    with err.status("loading index and model"):
        return Pipeline.from_config(config)


def _print_sources(answer) -> None:
    out.print()
    cited = set(answer.citations)
    out.print(f"\n[bold]Sources[/] (cited by the model: {', '.join(f'[{n}]' for n in answer.citations) or 'none'}"
              + (f"; attributed by ragkit: {', '.join(f'[{n}]' for n in answer.attributed)}" if answer.attributed else "")
              + ")")
    attributed = {}
    for a in answer.attributions:
        if a["n"] in answer.attributed:
            attributed[a["n"]] = max(attributed.get(a["n"], 0.0), a["similarity"])
    for s in answer.sources:
        mark = ("[green]cited[/]" if s.n in cited else
                f"[cyan]attributed by ragkit (cosine {attributed[s.n]:.2f})[/]" if s.n in attributed else "[dim]not cited[/]")
        out.print(f"  [{s.n}] {_safe(s.title or s.doc_id)} — {_safe(s.source)}, {_safe(s.chunk_id)}, "
                  f"chars {s.start}-{s.end}{' (cut)' if s.truncated else ''}  {mark}", soft_wrap=True)
    if answer.dropped:
        out.print(f"  [yellow]left out for the context budget:[/] {', '.join(_safe(d) for d in answer.dropped)}")
    if answer.knowledge:
        out.print(f"[bold]Background knowledge[/] (from domain adapters {', '.join(answer.adapters)}; may be wrong):")
        out.print(_safe(answer.knowledge, lines=True), highlight=False, soft_wrap=True)
    if answer.unknown_citations:
        out.print(f"  [yellow]cited numbers with no source:[/] {answer.unknown_citations}")


@app.command()
def chat(
    index_dir: Optional[Path] = typer.Option(None, "--index", "-i", help="Index folder (overrides the config's)."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML file."),
    k: Optional[int] = typer.Option(None, "-k", help="Sources to retrieve per question."),
    retriever: Optional[str] = typer.Option(None, help="bm25, dense or hybrid."),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id or local folder, or the endpoint's model."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer, in tokens."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """Interactive questions and answers; earlier turns stay in the conversation. Ctrl-D or 'exit' ends."""
    try:
        pipeline = _pipeline(config_file, index_dir, k, retriever, llm, max_new_tokens, adapter)
    except (RagkitError, ValueError) as e:
        _fail(e)
    history: list[dict] = []
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        if question.lower() in ("exit", "quit", ":q"):
            return
        if not question:
            continue
        try:
            stream = pipeline.stream(question, history=history)
            out.print("ragkit> ", end="")
            for piece in stream:
                out.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
        except (RagkitError, ValueError) as e:
            err.print(f"[bold red]error:[/] {_safe(e, lines=True)}", soft_wrap=True)
            continue
        _print_sources(stream.answer)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": stream.answer.text}]


@app.command("eval-qa")
def eval_qa(
    data_dir: Path = typer.Argument(..., help="BEIR folder with answers.jsonl (e.g. pubmedqa_labeled)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML (LLM, k, retriever, index)."),
    conditions: Optional[str] = typer.Option(None, help="Comma-separated: closed, retrieval, gold, knowledge, "
                                             "knowledge_unfiltered, closed_knowledge (default: closed,retrieval,gold; "
                                             "with --adapter: closed,retrieval,knowledge,knowledge_unfiltered)."),
    split: str = typer.Option("test", help="qrels split whose questions are asked."),
    limit: Optional[int] = typer.Option(None, help="Ask only the first N questions."),
    explain_tokens: int = typer.Option(48, help="Tokens of free answer generated per question for the groundedness "
                                                "judge (0: accuracy only)."),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id or local folder (backend hf), or the endpoint's model."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """QA accuracy with no retrieval, with retrieval and with gold passages, plus groundedness; with
    --adapter, also with the black-box knowledge section (filtered and unfiltered)."""
    from .evaluate_qa import evaluate_qa
    from .pipeline import Pipeline

    try:
        config = _config_with_adapters(config_file, adapter)
        if llm:
            config.llm.model = llm
        with err.status("loading models"):
            pipeline = Pipeline.from_config(config)
        res = evaluate_qa(data_dir, pipeline, split, _split(conditions) if conditions else None, limit, explain_tokens,
                          show_progress=True)
    except (RagkitError, ValueError) as e:
        _fail(e)
    res = {"llm": pipeline.llm.model_id, "k": config.retrieval.k,
           **({"adapters": [a.describe() for a in pipeline.adapters]} if pipeline.adapters else {}),
           "conditions": res}
    t = Table(title=f"{data_dir.name} ({split}) · {pipeline.llm.model_id}")
    for col in ["condition", "questions", "accuracy / F1", "groundedness", "seconds"]:
        t.add_column(col)
    for cond, m in res["conditions"].items():
        score = m.get("accuracy", m.get("token_f1"))
        t.add_row(cond, str(m["questions"]), f"{score:.4f}", f"{m['groundedness']:.4f}" if "groundedness" in m else "-",
                  f"{m['seconds']:.0f}")
    out.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2) + "\n")
        out.print(f"wrote {json_out}")


@app.command("eval")
def eval_(
    data_dir: Path = typer.Argument(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."),
    retrievers: str = typer.Option("bm25,dense,hybrid", help="Comma-separated: bm25, dense, hybrid, colbert, "
                                   "X+colbert_rerank (X's candidates reordered by ColBERT)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    split: str = typer.Option("test", help="qrels split to score."),
    fusion: str = typer.Option("rrf", help="Hybrid fusion: rrf or weighted."),
    chunk_tokens: int = typer.Option(256, help="Tokens per chunk."),
    overlap: int = typer.Option(32, help="Tokens shared by consecutive chunks."),
) -> None:
    """Score retrievers on a BEIR folder: nDCG@10, R@100, RR@10, index seconds, ms per query."""
    from .chunking import ChunkingConfig
    from .evaluate import evaluate_beir
    from .index import IndexConfig
    from .retrieve.hybrid import FusionConfig

    try:
        config = IndexConfig(chunking=ChunkingConfig(chunk_tokens, overlap), fusion=FusionConfig(method=fusion))
        res = evaluate_beir(data_dir, _split(retrievers), split=split, config=config, show_progress=True)
    except (RagkitError, ValueError) as e:
        _fail(e)
    t = Table(title=f"{data_dir.name} ({split})")
    for col in ["retriever", "nDCG@10", "R@100", "RR@10", "index s", "ms/query"]:
        t.add_column(col, justify="right" if col != "retriever" else "left")
    for name, m in res.items():
        t.add_row(name, *(f"{m[c]:.4f}" for c in ("nDCG@10", "R@100", "RR@10")), f"{m['index_s']:.2f}",
                  f"{m['ms_per_query']:.2f}")
    out.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2) + "\n")
        out.print(f"wrote {json_out}")


from .cli_adapter import adapter_app  # noqa: E402 - `ragkit adapter ...` (white-box domain adapters)

app.add_typer(adapter_app, name="adapter")

@app.command()
def serve(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML (index, LLM, retrieval, server)."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index folder (overrides the config's)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default."),
    port: int = typer.Option(8000, help="Port to listen on."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models,
    /v1/retrieve, /healthz. Set the variable named by server.api_key_env (RAGKIT_API_KEY) to require a key."""
    try:
        from .server import serve as run_server

        config = _config_with_adapters(config_file, adapter)
        if index_dir:
            config.index = str(index_dir)
        if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(config.server.api_key_env or ""):
            err.print(f"[yellow]warning:[/] serving on {host} without an API key (set {config.server.api_key_env})")
        run_server(config, host, port, log_level)
    except (RagkitError, ImportError) as e:
        _fail(e)


if __name__ == "__main__":  # pragma: no cover - python -m ragkit.cli (after every command is defined)
    app(sys.argv[1:])
