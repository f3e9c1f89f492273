"""`ragkit tune`: adapt the retrievers to a corpus from its documents alone (ragkit.retrieval.tune)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ragkit.cli.console import _fail, _safe, err, out
from ragkit.errors import RagkitError

# seconds per unit on 2 CPU cores (bench/tune.py): reading a chunk's prompt and writing one question with SmolLM2
# (16 at a time: 1.5-2.8 s per chunk for 3 questions), a dense step of 8 questions with 256-token passages (5-19 s
# on an AVX2 CPU in float32, about a third of that with native bf16), a ColBERT step, encoding a chunk
ESTIMATE = {"chunk": 0.9, "question": 0.2, "dense_step": 6.0, "colbert_step": 0.4, "chunk_encode": 0.03}


def tune(
    corpus: str = typer.Argument(..., help="Corpus (a .jsonl file, a folder, a BEIR folder: its corpus.jsonl only) "
                                           "or an index (folder or postgresql:// URL: its chunks are the documents)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write: dense/ (a sentence-transformers model), "
                                                          "colbert/, queries.jsonl, fusion.json, tune.json; a re-run resumes."),
    llm: str = typer.Option("default", help="The LLM that writes the questions: a model reference (packaged "
                                            "SmolLM2 by default, e.g. qwen2.5-coder-1.5b, a folder or hub id); "
                                            "with --config, the endpoint's model."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML whose llm section is the "
                                               "question writer (e.g. backend openai, base_url: an OpenAI-compatible "
                                               "endpoint; the key from the environment)."),
    queries: int = typer.Option(0, help="Chunks to write questions for (0: a quarter of the chunks, 100 to 1,000)."),
    questions_per_chunk: int = typer.Option(3, help="Questions the LLM writes per chunk, in one reply."),
    teacher: str = typer.Option("hybrid", help="Pseudo-label teacher: hybrid (BM25 + dense), colbert (MaxSim) or both."),
    candidates: int = typer.Option(6, help="Candidates per question: the source chunk and hard negatives."),
    steps: int = typer.Option(0, help="Training steps of each student (0: about two epochs, 100 to 400)."),
    colbert: bool = typer.Option(True, help="Also train the ColBERT checkpoint (DIR/colbert)."),
    encoder: str = typer.Option("default", help="The dense encoder to start from (hub id or folder)."),
    round_trip_k: int = typer.Option(20, help="Keep a question when its chunk is in the untuned hybrid's top k."),
    workers: int = typer.Option(16, help="Questions generated at once (one shared batch on a local model)."),
    seed: int = typer.Option(0, help="Seed for the sample and the data order."),
) -> None:
    """Tune the dense and ColBERT retrievers to a corpus without labels: an LLM writes questions for sampled
    chunks, filtered by a round trip; BM25 and dense hard negatives scored by a teacher are distilled into
    both students; fusion settings are chosen on held-out synthetic questions. Then:
    ragkit index CORPUS --out IDX --encoder DIR/dense --retrievers bm25,dense,colbert --colbert-checkpoint DIR/colbert"""
    from ragkit.retrieval.tune import TuneConfig, auto_steps
    from ragkit.retrieval.tune import tune as run

    try:
        config = TuneConfig(llm=llm, queries=queries, questions_per_chunk=questions_per_chunk, teacher=teacher,
                            candidates=candidates, dense_steps=steps, colbert_steps=steps, colbert=colbert,
                            round_trip_k=round_trip_k, workers=workers, seed=seed)
        docs = _documents(corpus)
        n_chunks = sum(max(1, len(d.text) // 1000) for d in docs)  # a rough chunk count, for the estimate
        n = queries or int(min(1000, max(100, n_chunks // 4)))
        # ~2 of 3 questions survive the filters, a fifth is held out
        steps_est = steps or auto_steps(int(0.5 * n * questions_per_chunk), config.dense_batch)
        est = (n * (ESTIMATE["chunk"] + questions_per_chunk * ESTIMATE["question"])
               + steps_est * (ESTIMATE["dense_step"] + colbert * ESTIMATE["colbert_step"])
               + 2 * n_chunks * ESTIMATE["chunk_encode"])
        err.print(f"tuning on {len(docs)} documents: about {n * questions_per_chunk} questions ({n} chunks) by {llm}, "
                  f"~{steps_est} steps per student; "
                  f"estimated {est / 60:.0f} min on 2 CPU cores (more with a larger LLM)")
        writer = None
        if config_file is not None:
            from ragkit.config import PipelineConfig
            from ragkit.generation.loader import load_llm

            llm_config = PipelineConfig.from_yaml(config_file).llm
            if llm != "default":
                llm_config.model = llm
            writer = load_llm(llm_config)
        summary = run(docs, out_dir, config, llm=writer, encoder=encoder, show_progress=True, log=err.print)
    except (RagkitError, ValueError, OSError) as e:
        _fail(e)
    f = summary["filter"]
    out.print(f"[green]tuned[/] {_safe(out_dir)}: {f['kept']} of {f['generated']} questions kept "
              f"(round trip dropped {f['round_trip']}), dense {summary['dense']['steps']} steps"
              + (f", colbert {summary['colbert']['steps']} steps" if "colbert" in summary else "")
              + (f"; fusion chosen on held-out synthetic questions: {json.dumps(summary['fusion']['chosen'])}"
                 if "fusion" in summary else ""))
    out.print(f"use it: ragkit index CORPUS --out IDX --encoder {_safe(out_dir / 'dense')}")


def _documents(corpus: str):
    """Documents of a corpus path, or of an index (one document per chunk)."""
    from ragkit.data.corpus import Document, load_corpus
    from ragkit.retrieval.stores.base import is_store_url
    from ragkit.retrieval.tune import check_corpus_input

    path = Path(corpus)
    if is_store_url(corpus) or (path / "manifest.json").is_file():
        from ragkit.retrieval.index import Index

        index = Index.load(corpus, only=["bm25"])
        return [Document(c.id, c.text, c.title, c.source, c.metadata) for c in index.chunks]
    return load_corpus(check_corpus_input(path))
