"""Train a small ColBERT on a user's corpus: contrastive learning from (query, positive, negative) triples.

Triples come from a BEIR train split (`qrels/train.tsv`: a judged query, a relevant document, and
the best BM25 hit that is not relevant) or are synthesised from the corpus alone: a sentence of a
passage is the pseudo-query, the passage without that sentence is the positive (an inverse cloze
task, so the model must match meaning rather than copy the words) and the best BM25 hit from another
document is the hard negative.

Distillation (`synthesize_distillation`, `teacher="hybrid"`): each pseudo-query (a sentence or the
title of a document) comes with the 16 documents a BM25 + MiniLM dense teacher ranks highest, the
source document left out (so copying its words teaches nothing), and the teacher's scores (the sum of
the z-normalised BM25 and cosine scores); the loss is the KL divergence between the teacher's and
ColBERT's softmax over those candidates. With `init="identity"` a plain encoder keeps its own token
states (identity projection, no markers), so step 0 is exactly the untrained default, and with
`freeze_layers=-1` only the projection trains: each text's encoder states are computed once and cached.

Each step scores every query against every passage of the batch (its positive, its hard negative and
the other queries' passages: in-batch negatives) by MaxSim, with cross-entropy on the positive.
Starting from a plain encoder, the projection is initialised with the top principal directions of
the corpus's token vectors, so step 0 is already a sensible ColBERT. The loop is ragkit's one
training loop (`ragkit.training`): every `save_every` steps the model, the AdamW state
(safetensors) and the step, losses and seeds (JSON) are written to `OUT/train_state/`, and a run
started again with the same output folder resumes from there. The result is a colbert-ai
HF_ColBERT checkpoint (`ragkit.retrieval.colbert.model`).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ragkit.data.chunking import Chunk
from ragkit.data.corpus import Document, load_beir_corpus, load_beir_queries, load_beir_qrels
from ragkit.errors import CorpusError
from ragkit.retrieval.colbert.model import ColBERTModel

STATE = "train_state"
Triple = tuple[str, str, str]  # query, positive passage, negative passage
Scored = tuple[str, tuple[str, ...], tuple[float, ...]]  # query, candidate passages, teacher scores
INITS = ("pca", "identity")


@dataclass
class TrainConfig:
    base: str = "default"       # plain encoder (hub id/folder/"default") or a ColBERT checkpoint to continue
    dim: int = 128              # projection size when starting from a plain encoder (init="pca")
    init: str = "pca"           # plain encoder: "pca" (dim-d projection from the corpus, markers on) or
                                # "identity" (its own token states: step 0 is the untrained default)
    steps: int = 300
    batch_size: int = 16        # queries per step; each brings a positive and a hard negative
    lr: float = 3e-5
    projection_lr: float = 1e-4
    warmup: float = 0.1         # share of steps with a linear warm-up
    query_maxlen: int = 32
    doc_maxlen: int | None = None  # None: 180 with a fresh PCA projection, else the base's own
    query_augmentation: bool = True
    freeze_layers: int = 0      # embeddings + this many bottom encoder layers stay fixed (cheaper steps on CPU);
                                # -1: the whole encoder (only the projection trains; encoder states cached)
    temperature: float = 0.05   # distillation: ColBERT's score per query token is divided by this
    save_every: int = 100
    seed: int = 0
    threads: int = 0            # torch threads; 0: all cores


def zscore(x: np.ndarray) -> np.ndarray:
    """Scores z-normalised over their candidates (how teacher scores are put on one scale)."""
    return (x - x.mean()) / (x.std() + 1e-6)


def _text(d: Document) -> str:
    return f"{d.title} {d.text}" if d.title else d.text


def _bm25(docs: Sequence[Document]):
    from ragkit.retrieval.bm25 import BM25Retriever

    bm25 = BM25Retriever()
    bm25.add([Chunk(f"{i}", d.id, 0, d.text, d.title) for i, d in enumerate(docs)])
    return bm25


SENTENCE = re.compile(r"(?<=[.!?])\s+")


def synthesize_triples(docs: Sequence[Document], n: int, seed: int = 0, min_words: int = 5,
                       max_words: int = 40) -> list[Triple]:
    """Pseudo-query triples from a corpus alone (inverse cloze task + BM25 hard negatives)."""
    rng = random.Random(seed)
    docs = [d for d in docs if d.text.strip()]
    pool = []
    for i, d in enumerate(docs):
        sents = [s for s in SENTENCE.split(d.text.strip()) if min_words <= len(s.split()) <= max_words]
        if sents and len(d.text.split()) >= 2 * min_words:
            pool.append((i, sents))
    if len(docs) < 2 or not pool:
        raise CorpusError(f"cannot synthesise training queries: need at least 2 documents with sentences of "
                          f"{min_words}-{max_words} words (got {len(pool)} usable of {len(docs)})")
    bm25 = _bm25(docs)
    out = []
    for _ in range(n):
        i, sents = pool[rng.randrange(len(pool))]
        query = rng.choice(sents)
        doc = docs[i]
        rest = doc.text.replace(query, " ", 1).strip() if rng.random() < 0.9 else doc.text  # ICT keeps it 10%
        positive = f"{doc.title} {rest}" if doc.title else rest
        negative = next((_text(docs[int(cid)]) for cid, _ in bm25.search(query, 10) if int(cid) != i), None)
        if negative is None:
            negative = _text(docs[rng.randrange(len(docs))])
        out.append((query, positive, negative))
    return out


def synthesize_distillation(docs: Sequence[Document], n: int, seed: int = 0, candidates: int = 16,
                            teacher: str = "hybrid", encoder=None, min_words: int = 5,
                            max_words: int = 40) -> list[Scored]:
    """Pseudo-queries (a sentence or the title of a document) with the `candidates` documents the
    teacher ranks highest, the source document left out, and the teacher's scores for them.

    The teacher is ragkit's hybrid's two members: BM25 and the MiniLM dense encoder (`encoder`, a
    SentenceEncoder; the packaged default when None); its score is the sum of the two scores, each
    z-normalised over the candidates (half the candidates from BM25's top, the rest by cosine)."""
    if teacher != "hybrid":
        raise ValueError(f"unknown teacher {teacher!r}; the one teacher is 'hybrid' (BM25 + dense)")
    from ragkit.retrieval.encoder import SentenceEncoder

    rng = random.Random(seed)
    docs = [d for d in docs if _text(d).strip()]
    pool = []
    for i, d in enumerate(docs):
        spans = [s for s in SENTENCE.split(d.text.strip()) if min_words <= len(s.split()) <= max_words]
        if d.title and len(d.title.split()) >= 3 and d.title.strip() not in spans:
            spans.append(d.title.strip())
        if spans:
            pool.append((i, spans))
    if len(docs) <= candidates or not pool:
        raise CorpusError(f"cannot synthesise distillation data: need more than {candidates} documents and "
                          f"sentences of {min_words}-{max_words} words or titles (got {len(pool)} usable of {len(docs)})")
    picks = [pool[rng.randrange(len(pool))] for _ in range(n)]
    queries = [(i, rng.choice(spans)) for i, spans in picks]
    bm25 = _bm25(docs)
    row = np.array([int(c) for c in bm25.ids])  # BM25's chunk order -> document position
    encoder = encoder or SentenceEncoder.from_pretrained()
    texts = [_text(d) for d in docs]
    dvec = np.asarray(encoder.encode(texts), dtype=np.float32)
    qvec = np.asarray(encoder.encode([q for _, q in queries]), dtype=np.float32)
    out = []
    for (src, query), qv in zip(queries, qvec):
        b = np.zeros(len(docs), dtype=np.float32)
        b[row] = bm25.scores(query, "chunk")
        cos = dvec @ qv
        b[src], cos[src] = -np.inf, -np.inf
        cand = list(dict.fromkeys([*np.argsort(-b, kind="stable")[:candidates // 2],
                                   *np.argsort(-cos, kind="stable")[:2 * candidates]]))[:candidates]
        bs, cs = b[cand], cos[cand]
        score = zscore(bs) + zscore(cs)
        out.append((query, tuple(texts[c] for c in cand), tuple(round(float(x), 4) for x in score)))
    return out


def beir_triples(data_dir: str | Path, split: str = "train", seed: int = 0) -> list[Triple]:
    """One triple per judged (query, relevant document) of `qrels/<split>.tsv`, BM25 hard negatives."""
    data_dir = Path(data_dir)
    if not (data_dir / "qrels" / f"{split}.tsv").is_file():
        raise CorpusError(f"{data_dir}/qrels/{split}.tsv not found: this set has no {split} split; "
                          "use synthetic triples (--synthetic N) instead")
    docs = load_beir_corpus(data_dir)
    queries, qrels = load_beir_queries(data_dir), load_beir_qrels(data_dir, split)
    by_id = {d.id: i for i, d in enumerate(docs)}
    bm25 = _bm25(docs)
    rng = random.Random(seed)
    out = []
    for qid, rels in qrels.items():
        if qid not in queries:
            continue
        pos = [d for d, r in rels.items() if r > 0 and d in by_id]
        if not pos:
            continue
        negs = [docs[int(c)] for c, _ in bm25.search(queries[qid], 30) if docs[int(c)].id not in rels]
        for d in pos:
            neg = negs[0] if negs else docs[rng.randrange(len(docs))]
            out.append((queries[qid], _text(docs[by_id[d]]), _text(neg)))
    if not out:
        raise CorpusError(f"{data_dir}/qrels/{split}.tsv gave no (query, relevant document) pairs")
    return out


class StateCache:
    """Each text's encoder states, computed once (for a frozen encoder: only the projection trains)."""

    def __init__(self, batch_size: int = 32) -> None:
        self.states: dict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.batch_size = batch_size

    @torch.inference_mode()
    def _fill(self, model: ColBERTModel, texts: Sequence[str], query: bool) -> None:
        missing = [t for t in dict.fromkeys(texts) if (query, t) not in self.states]
        missing.sort(key=len)
        training = model.bert.training
        model.bert.eval()  # no dropout: the states are computed once for the whole run
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            if query:
                ids, mask = model.tokenize_queries(chunk)
                attend = mask | (ids == model.tokenizer.mask_token_id) if model.settings.attend_to_mask_tokens else mask
                keep = ids != model.tokenizer.pad_token_id
            else:
                ids, mask = model.tokenize_docs(chunk)
                attend, keep = mask, model._doc_keep(ids, mask)
            hidden = model.bert(input_ids=ids, attention_mask=attend)[0]
            for r, t in enumerate(chunk):
                n = int((keep[r] | mask[r].bool()).nonzero().max()) + 1
                self.states[(query, t)] = (hidden[r, :n].half().clone(), keep[r, :n].clone())
        model.bert.train(training)

    def tensors(self, model: ColBERTModel, texts: Sequence[str], query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `query_tensors`/`doc_tensors`: (B, L, dim) normalised vectors and the (B, L) mask."""
        self._fill(model, texts, query)
        items = [self.states[(query, t)] for t in texts]
        width = max(h.shape[0] for h, _ in items)
        h = torch.zeros(len(items), width, items[0][0].shape[1])
        keep = torch.zeros(len(items), width, dtype=torch.bool)
        for r, (x, k) in enumerate(items):
            h[r, :len(x)], keep[r, :len(k)] = x.float(), k
        v = torch.nn.functional.normalize(model.linear(h), dim=-1)
        return v * keep.unsqueeze(-1), keep


def _tensors(model: ColBERTModel, texts: Sequence[str], query: bool, cache: StateCache | None):
    if cache is not None:
        return cache.tensors(model, texts, query)
    if query:
        return model.query_tensors(*model.tokenize_queries(texts))
    return model.doc_tensors(*model.tokenize_docs(texts))


def contrastive_loss(model: ColBERTModel, batch: Sequence[Triple], cache: StateCache | None = None) -> torch.Tensor:
    """Cross-entropy of each query's positive among all 2·B passages of the batch (MaxSim scores)."""
    queries = [t[0] for t in batch]
    passages = [t[1] for t in batch] + [t[2] for t in batch]
    q, q_keep = _tensors(model, queries, True, cache)
    d, d_keep = _tensors(model, passages, False, cache)
    sim = torch.einsum("bqh,nlh->bnql", q, d)
    sim = sim.masked_fill(~d_keep[None, :, None, :], -1e4).max(dim=3).values  # B × 2B × Lq
    scores = (sim * q_keep[:, None, :]).sum(dim=2)
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(batch)))


def distillation_loss(model: ColBERTModel, batch: Sequence[Scored], temperature: float = 0.05,
                      cache: StateCache | None = None) -> torch.Tensor:
    """KL(teacher ‖ ColBERT) over each query's candidates: softmax of the teacher's scores against
    the softmax of ColBERT's MaxSim per scored query token divided by `temperature`."""
    n = len(batch[0][1])
    if any(len(e[1]) != n or len(e[2]) != n for e in batch):
        raise ValueError("distillation examples of one batch need the same number of candidates and scores")
    q, q_keep = _tensors(model, [e[0] for e in batch], True, cache)
    d, d_keep = _tensors(model, [p for e in batch for p in e[1]], False, cache)
    d, d_keep = d.view(len(batch), n, *d.shape[1:]), d_keep.view(len(batch), n, -1)
    sim = torch.einsum("bqh,bnlh->bnql", q, d)
    sim = sim.masked_fill(~d_keep[:, :, None, :], -1e4).max(dim=3).values  # B × n × Lq
    student = (sim * q_keep[:, None, :]).sum(dim=2) / q_keep.sum(dim=1, keepdim=True) / temperature
    target = torch.softmax(torch.tensor([e[2] for e in batch], dtype=torch.float32), dim=-1)
    return torch.nn.functional.kl_div(torch.log_softmax(student, dim=-1), target, reduction="batchmean")


def _pca_projection(model: ColBERTModel, texts: Sequence[str], dim: int, seed: int) -> torch.Tensor:
    """Top `dim` principal directions of the encoder's token states over a sample of texts (dim × hidden)."""
    rng = random.Random(seed)
    sample = rng.sample(list(texts), min(len(texts), 256))
    states = []
    with torch.inference_mode():
        for start in range(0, len(sample), 32):
            ids, mask = model.tokenize_docs(sample[start:start + 32])
            h = model.bert(input_ids=ids, attention_mask=mask)[0]
            states.append(h[mask.bool()])
    x = torch.cat(states).float()
    _, _, v = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    if v.shape[0] < dim:
        raise ValueError(f"dim {dim} is larger than the {v.shape[0]} directions the sample allows")
    return v[:dim].contiguous()


def _freeze(model: ColBERTModel, n_layers: int) -> None:
    """Keep the embeddings and the bottom `n_layers` encoder layers fixed (-1: the whole encoder)."""
    if n_layers < 0:
        for p in model.bert.parameters():
            p.requires_grad_(False)
        return
    if n_layers == 0:
        return
    layers = getattr(getattr(model.bert, "encoder", None), "layer", None)
    if layers is None or n_layers > len(layers):
        raise ValueError(f"cannot freeze {n_layers} layers of {type(model.bert).__name__}")
    for module in [model.bert.embeddings, *layers[:n_layers]]:
        for p in module.parameters():
            p.requires_grad_(False)


def _optimizer(model: ColBERTModel, config: TrainConfig) -> torch.optim.AdamW:
    _freeze(model, config.freeze_layers)
    groups = [{"params": [p for p in model.bert.parameters() if p.requires_grad], "lr": config.lr},
              {"params": list(model.linear.parameters()), "lr": config.projection_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)


def _schedule(config: TrainConfig) -> Callable[[int], float]:
    warm = max(1, int(config.warmup * config.steps))
    return lambda s: min((s + 1) / warm, max(0.0, (config.steps - s) / max(1, config.steps - warm)))


def train_colbert(triples: Sequence[Triple] | Sequence[Scored], out_dir: str | Path, config: TrainConfig | None = None,
                  corpus_texts: Sequence[str] | None = None, show_progress: bool | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Train and save a ColBERT checkpoint to `out_dir`; resumes from `out_dir/train_state` when present.
    `triples` are (query, positive, negative) triples (contrastive loss) or (query, candidates,
    teacher scores) examples from `synthesize_distillation` (distillation loss).
    Returns a summary: steps, first/last losses (mean of 10 steps), seconds."""
    from ragkit.progress import default_enabled
    from ragkit.runtime import torch_threads
    from ragkit.training import read_state, train_loop

    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not triples:
        raise ValueError("no training triples")
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; choose one of {', '.join(INITS)}")
    distill = not isinstance(triples[0][1], str)
    state_dir = out / STATE
    with torch_threads(config.threads or os.cpu_count() or 1):
        torch.manual_seed(config.seed)
        saved = read_state(state_dir)  # an older ragkit's checkpoint is an error naming the folder
        if saved is not None:
            model = ColBERTModel.from_pretrained(str(state_dir))
        else:
            base = ColBERTModel.from_pretrained(config.base)
            fresh = base.model_id.startswith("colbert-minilm-untrained") or base.settings.dim == base.bert.config.hidden_size \
                and torch.equal(base.linear.weight, torch.eye(base.linear.weight.shape[0]))
            model = base
            if fresh and config.init == "identity":  # the plain encoder's own token states: step 0 == untrained
                model.settings.doc_maxlen = config.doc_maxlen or model.settings.doc_maxlen
            elif fresh:  # a plain encoder: ColBERT markers, query augmentation, PCA-initialised projection
                s = model.settings
                s.markers, s.query_augmentation = True, config.query_augmentation
                s.query_maxlen, s.doc_maxlen, s.dim = config.query_maxlen, config.doc_maxlen or 180, config.dim
                texts = corpus_texts or [t[1] if isinstance(t[1], str) else t[1][0] for t in triples]
                weight = _pca_projection(model, texts, config.dim, config.seed)
                linear = torch.nn.Linear(weight.shape[1], config.dim, bias=False)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                model = ColBERTModel(model.bert, model.tokenizer, linear, s, model.model_id, model.fingerprint)
        s = model.settings
        s.query_maxlen, s.doc_maxlen = config.query_maxlen, config.doc_maxlen or s.doc_maxlen
        opt = _optimizer(model, config)
        cache = StateCache() if config.freeze_layers < 0 else None
        order_seed = int(saved["seeds"].get("order", config.seed)) if saved else config.seed
        if saved is not None and log:
            log(f"resuming from step {saved['step']} ({state_dir})")
        order = np.random.default_rng(order_seed).permutation(
            np.resize(np.arange(len(triples)), config.steps * config.batch_size))
        show_bar = default_enabled() if show_progress is None else show_progress

        def step_loss(step: int) -> torch.Tensor:
            batch = [triples[i] for i in order[step * config.batch_size:(step + 1) * config.batch_size]]
            if distill:
                return distillation_loss(model, batch, config.temperature, cache)
            return contrastive_loss(model, batch, cache) if cache is not None else contrastive_loss(model, batch)

        def report(done: int, losses: list[float], secs: float) -> None:
            if log and not show_bar and (done % 10 == 0 or done == config.steps):
                log(f"step {done}/{config.steps} loss {np.mean(losses[-10:]):.4f} ({secs:.0f}s)")

        t0 = time.perf_counter()
        r = train_loop(model, opt, config.steps, step_loss, state_dir, schedule=_schedule(config),
                       save_every=config.save_every, save_model=model.save_pretrained,
                       seeds={"seed": config.seed, "order": order_seed}, extra={"config": asdict(config)},
                       clip=1.0, desc="training colbert", progress=show_progress, loss_digits=5, on_step=report)
        losses = r["losses"]
        model.eval()
        model.model_id = out.resolve().name
        model.save_pretrained(out)
        shutil.rmtree(state_dir, ignore_errors=True)
        summary = {"steps": r["steps"], "resumed_from_step": r["resumed_from_step"], "triples": len(triples),
                   "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
                   "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                   "config": asdict(config), "losses": losses}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def training_examples(corpus: str | Path, docs: list, n_default: int, split: str = "train",
                      synthetic: int | None = None, teacher: str | None = None, candidates: int = 16,
                      seed: int = 0) -> tuple[list, str]:
    """(training examples, where they came from) for `corpus`: distillation pseudo-queries scored by a
    `teacher`; else the BEIR folder's `split` qrels when it has them (and `synthetic` is not asked);
    else `synthetic` (default `n_default`) synthesised triples."""
    if teacher:
        n = synthetic or n_default
        return (synthesize_distillation(docs, n, seed, candidates=candidates, teacher=teacher),
                f"synthetic pseudo-queries, {teacher} teacher scores")
    if synthetic is None and (Path(corpus) / "qrels" / f"{split}.tsv").is_file():
        return beir_triples(corpus, split, seed), f"{split} split"
    return (synthesize_triples(docs, synthetic or n_default, seed),
            "synthetic (sentence as query, BM25 hard negative)")
