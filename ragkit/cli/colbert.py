"""`ragkit colbert ...`: train and inspect ColBERT checkpoints (a thin layer over the API)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ragkit.cli import console as cli
from ragkit.errors import RagkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="ColBERT late interaction: train a checkpoint on your corpus, inspect one.")


@app.command()
def train(
    corpus: Path = typer.Argument(..., help="Corpus to train on: a BEIR folder (its train split is used when it has "
                                            "one) or any corpus ragkit reads (pseudo-queries are synthesised)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (resumes a run found there)."),
    base: str = typer.Option("default", help="Start from: a plain encoder (hub id, folder, 'default' = MiniLM) or a "
                                             "ColBERT checkpoint."),
    split: str = typer.Option("train", help="BEIR qrels split giving (query, relevant document) pairs."),
    synthetic: Optional[int] = typer.Option(None, help="Synthesise this many triples from the corpus even when a "
                                                       "train split exists (default when none: steps × batch size)."),
    teacher: Optional[str] = typer.Option(None, help="Distil a teacher instead of contrastive triples: 'hybrid' "
                                                     "(BM25 + MiniLM dense) scores --candidates documents for each "
                                                     "synthesised pseudo-query (a sentence or title; its own "
                                                     "document left out); loss: KL divergence."),
    candidates: int = typer.Option(16, help="Teacher-scored documents per pseudo-query (--teacher)."),
    temperature: float = typer.Option(0.05, help="Distillation: ColBERT's score per query token is divided by this."),
    init: str = typer.Option("pca", help="From a plain encoder: 'pca' (a --dim projection from the corpus's principal "
                                         "directions, [Q]/[D] markers and [MASK] augmentation on) or 'identity' (its "
                                         "own token states, no markers: step 0 is the untrained default)."),
    dim: int = typer.Option(128, help="Projection size (token vector dimension) with --init pca."),
    steps: int = typer.Option(300, help="Optimiser steps."),
    batch_size: int = typer.Option(16, help="Queries per step (each with a positive and a hard negative)."),
    lr: float = typer.Option(3e-5, help="Encoder learning rate."),
    projection_lr: float = typer.Option(1e-4, help="Projection learning rate."),
    doc_maxlen: Optional[int] = typer.Option(None, help="Document tokens kept (training and the saved checkpoint); "
                                                        "default 180 with --init pca, else the base's own."),
    query_augmentation: bool = typer.Option(True, help="Pad queries with [MASK] to query_maxlen (ColBERT's query "
                                                       "augmentation; colbert-ai always does it)."),
    freeze_layers: int = typer.Option(0, help="Keep the embeddings and this many bottom encoder layers fixed "
                                              "(faster steps on a CPU); -1: the whole encoder, only the projection "
                                              "trains and each text is encoded once."),
    save_every: int = typer.Option(100, help="Write a resumable state every N steps (0: never)."),
    threads: int = typer.Option(0, help="torch threads (0: all cores)."),
    seed: int = typer.Option(0, help="Seed for the data order, synthesis and projection."),
) -> None:
    """Train a ColBERT checkpoint: contrastive learning (in-batch + BM25 hard negatives) or distillation of
    a BM25 + dense teacher (--teacher hybrid)."""
    from ragkit.data.corpus import load_corpus
    from ragkit.retrieval.colbert.train import TrainConfig, train_colbert, training_examples

    try:
        config = TrainConfig(base=base, dim=dim, init=init, steps=steps, batch_size=batch_size, lr=lr,
                             projection_lr=projection_lr, doc_maxlen=doc_maxlen, query_augmentation=query_augmentation,
                             freeze_layers=freeze_layers, temperature=temperature, save_every=save_every,
                             threads=threads, seed=seed)
        docs = load_corpus(corpus)
        with cli.err.status(f"preparing training examples from {len(docs)} documents"):
            triples, source = training_examples(corpus, docs, steps * batch_size, split, synthetic, teacher,
                                                candidates, seed)
        cli.err.print(f"{len(triples)} training examples ({source}); {steps} steps of {batch_size}")
        res = train_colbert(triples, out_dir, config, corpus_texts=[d.text for d in docs], show_progress=None,
                            log=cli.err.print)
    except (RagkitError, ValueError) as e:
        cli._fail(e)
    cli.out.print(f"[green]trained[/] {res['steps']} steps in {res['seconds']:.0f}s on {res['threads']} threads: "
                  f"loss {res['loss_first10']:.3f} → {res['loss_last10']:.3f}; checkpoint in {out_dir}")


@app.command()
def info(
    checkpoint: str = typer.Argument("default", help="Checkpoint folder, hub id, or 'default'."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a ColBERT checkpoint's settings: dimension, query/document lengths, markers, fingerprint."""
    from ragkit.retrieval.colbert.model import ColBERTModel

    try:
        model = ColBERTModel.from_pretrained(checkpoint)
    except RagkitError as e:
        cli._fail(e)
    d = model.describe()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        cli.out.print(f"{k:>22}: {v}", markup=False, highlight=False)
