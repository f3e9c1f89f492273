"""`ragkit ask / chat`: answers with cited sources from a pipeline (index + LLM + adapters)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ragkit.errors import RagkitError
from ragkit.cli.console import _config_with_adapters, _fail, _safe, err, out, printable, query_threads


@query_threads
def ask(
    question: str = typer.Argument(..., help="The question."),
    index_dir: Optional[str] = typer.Option(None, "--index", "-i", help="Index folder or postgresql:// store URL (overrides the config's)."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML file."),
    k: Optional[int] = typer.Option(None, "-k", help="Sources to retrieve."),
    retriever: Optional[str] = typer.Option(None, help="bm25, dense or hybrid."),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id or local folder (backend hf), or the endpoint's model."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer, in tokens."),
    draft: Optional[str] = typer.Option(None, help="A smaller sibling of the LLM that drafts tokens (speculative decoding, greedy answers), e.g. qwen2.5-coder-0.5b."),
    escalate_to: Optional[str] = typer.Option(None, help="Cascade: a larger LLM that answers instead when the LLM is unsure, e.g. qwen2.5-coder-1.5b."),
    min_confidence: Optional[float] = typer.Option(None, help="Cascade: escalate below this mean token probability of the first answer (default 0.5)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole answer (text, sources, citations) as JSON."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """Answer a question from an index with an LLM, streaming the answer, then its cited sources."""
    try:
        pipeline = _pipeline(config_file, index_dir, k, retriever, llm, max_new_tokens, adapter, draft,
                             escalate_to, min_confidence)
        stream = pipeline.stream(question)
        for piece in stream:
            if not as_json:
                out.print(printable(piece), end="", highlight=False, markup=False, soft_wrap=True)
    except (RagkitError, ValueError) as e:
        _fail(e)
    answer = stream.answer
    if as_json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return
    _print_sources(answer)


def _pipeline(config_file, index_dir, k, retriever, llm, max_new_tokens, adapters=None, draft=None,
              escalate_to=None, min_confidence=None):
    """A Pipeline from an optional YAML file plus command-line overrides."""
    from ragkit.generation.pipeline import Pipeline

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
    if draft:
        config.llm.draft = draft
    if escalate_to:
        config.cascade.model = escalate_to
    if min_confidence is not None:
        config.cascade.min_confidence = min_confidence
    with err.status("loading index and model"):
        return Pipeline.from_config(config)


def _print_sources(answer) -> None:
    out.print()
    if answer.cascade:
        c = answer.cascade
        out.print(f"\n[bold]Answered by[/] {_safe(answer.model)}: {_safe(c['reason'])}"
                  + (" — escalated" if c["escalated"] else ""), highlight=False, soft_wrap=True)
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


@query_threads
def chat(
    index_dir: Optional[str] = typer.Option(None, "--index", "-i", help="Index folder or postgresql:// store URL (overrides the config's)."),
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
                out.print(printable(piece), end="", highlight=False, markup=False, soft_wrap=True)
        except (RagkitError, ValueError) as e:
            err.print(f"[bold red]error:[/] {_safe(e, lines=True)}", soft_wrap=True)
            continue
        _print_sources(stream.answer)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": stream.answer.text}]
