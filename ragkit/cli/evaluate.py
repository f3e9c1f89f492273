"""`ragkit eval / eval-qa`: retrieval quality on a BEIR folder, QA accuracy with and without retrieval."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ragkit.errors import RagkitError
from ragkit.cli.console import _config_with_adapters, _fail, _split, err, out


def eval_qa(
    data_dir: Path = typer.Argument(..., help="BEIR folder with answers.jsonl (e.g. pubmedqa_labeled)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML (LLM, k, retriever, index)."),
    conditions: Optional[str] = typer.Option(None, help="Comma-separated: closed, retrieval, gold, knowledge, "
                                             "knowledge_unfiltered, closed_knowledge (default: closed,retrieval,gold; "
                                             "with --adapter: closed,retrieval,knowledge,knowledge_unfiltered)."),
    split: str = typer.Option("test", help="qrels split whose questions are asked."),
    limit: Optional[int] = typer.Option(None, help="Ask only the first N questions."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report (tables, plots) here."),
    explain_tokens: int = typer.Option(48, help="Tokens of free answer generated per question for the groundedness "
                                                "judge (0: accuracy only)."),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id or local folder (backend hf), or the endpoint's model."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """QA accuracy with no retrieval, with retrieval and with gold passages, plus groundedness; with
    --adapter, also with the black-box knowledge section (filtered and unfiltered)."""
    from ragkit.generation.evaluate import evaluate_qa
    from ragkit.generation.pipeline import Pipeline

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
    _write(json_out, res)
    if report:
        from ragkit.report import qa_report

        _wrote(qa_report(res, f"QA evaluation: {data_dir.name} ({split})").write(report))


def _write(json_out: Optional[Path], res: dict) -> None:
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2) + "\n")
        out.print(f"wrote {json_out}")


def _wrote(path: Path) -> None:
    out.print(f"wrote {path}")


def eval_(
    data_dirs: list[Path] = typer.Argument(..., help="BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); "
                                           "several are scored one after another."),
    retrievers: str = typer.Option("bm25,dense,hybrid", help="Comma-separated: bm25, dense, hybrid, colbert, "
                                   "X+colbert_rerank (X's candidates reordered by ColBERT)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures to this JSON file (several "
                                            "folders: {\"sets\": {name: figures}})."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report (nDCG@10 "
                                          "per set and retriever, recall@k curves, query latencies) here."),
    split: str = typer.Option("test", help="qrels split to score."),
    fusion: str = typer.Option("rrf", help="Hybrid fusion: rrf or weighted."),
    chunk_tokens: int = typer.Option(256, help="Tokens per chunk."),
    overlap: int = typer.Option(32, help="Tokens shared by consecutive chunks."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Dense encoder (hub id or folder, e.g. a `ragkit tune` "
                                          "output's dense/) instead of the packaged MiniLM."),
    colbert_checkpoint: Optional[str] = typer.Option(None, "--colbert-checkpoint", help="ColBERT checkpoint folder "
                                                     "(e.g. a `ragkit tune` output's colbert/) instead of the untrained MiniLM."),
    store: Optional[str] = typer.Option(None, "--store", help="Save each set's index to this store (a postgresql:// "
                                        "URL; the schema is replaced per set) and score it as loaded from there."),
) -> None:
    """Score retrievers on BEIR folders: nDCG@10, R@100, RR@10, index seconds, ms per query."""
    from ragkit.data.chunking import ChunkingConfig
    from ragkit.retrieval.evaluate import evaluate_beir
    from ragkit.retrieval.index import IndexConfig
    from ragkit.retrieval.hybrid import FusionConfig

    sets: dict[str, dict] = {}
    try:
        from ragkit.retrieval.colbert.exact import ColBERTConfig

        config = IndexConfig(chunking=ChunkingConfig(chunk_tokens, overlap), fusion=FusionConfig(method=fusion))
        if encoder:
            config.encoder = encoder
        if colbert_checkpoint:
            config.colbert = ColBERTConfig(checkpoint=colbert_checkpoint)
        names = _split(retrievers)
        for data_dir in data_dirs:
            res = sets[data_dir.name] = evaluate_beir(data_dir, names, split=split, config=config, show_progress=True,
                                                              store=store)
            t = Table(title=f"{data_dir.name} ({split})")
            for col in ["retriever", "nDCG@10", "R@100", "RR@10", "index s", "ms/query"]:
                t.add_column(col, justify="right" if col != "retriever" else "left")
            for name, m in res.items():
                t.add_row(name, *(f"{m[c]:.4f}" for c in ("nDCG@10", "R@100", "RR@10")), f"{m['index_s']:.2f}",
                          f"{m['ms_per_query']:.2f}")
            out.print(t)
    except (RagkitError, ValueError) as e:
        _fail(e)
    _write(json_out, sets[data_dirs[0].name] if len(data_dirs) == 1 else {"sets": sets})
    if report:
        from ragkit.report import retrieval_report

        _wrote(retrieval_report(sets, "Retrieval evaluation", f"split {split} · {', '.join(sets)}").write(report))
