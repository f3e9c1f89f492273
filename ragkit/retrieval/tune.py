"""Domain adaptation of the retrievers from the corpus alone (`ragkit tune`, GPL-style).

1. **Query synthesis**: for sampled chunks, an LLM (any ragkit backend; the packaged SmolLM2 by
   default) writes `questions_per_chunk` (3, as GPL does) questions the chunk answers, in one reply.
   Replies are cached in `OUT/queries.jsonl` as they come, so a re-run (or a resumed one) reuses them.
   Filters, each counted: length bounds, a question shape (ends with "?"; not a sentence copied from the
   chunk; not about "this passage"), de-duplication, and a round trip (the source chunk must rank in the
   untuned hybrid's top `round_trip_k` for its question).
2. **Pseudo-labels**: for each kept question, hard negatives from BM25's and the dense retriever's
   tops; a teacher scores every candidate: `hybrid` (z-normalised BM25 + z-normalised cosine),
   `colbert` (MaxSim of the untrained MiniLM ColBERT) or `both` (their sum). The source chunk is the
   known positive: its teacher score is lifted to at least the best negative's + `margin`.
3. **Students**, by KL distillation over the candidates (softmax of the teacher's scores vs the
   student's): the dense bi-encoder (written to `OUT/dense`, a sentence-transformers folder:
   `--encoder OUT/dense`) and the ColBERT checkpoint (`OUT/colbert`, the existing trainer). Both
   trainings resume from their checkpoints.
4. **Held-out check**: each student against its untuned self on held-out synthetic questions (MRR of
   the source document in the untuned hybrid's top 30 reordered by it); one that loses is reported
   (`tune.json` "use") and the tuned index keeps the untuned retriever for it.
5. **Fusion** settings (RRF k, weights, members, rerank depth) chosen on the same held-out questions
   (never on judged queries), reported in `OUT/fusion.json` and `OUT/tune.json`.

Leak guard: synthesis reads chunks only; a BEIR folder is read through its `corpus.jsonl` and a
`queries.jsonl` (or a qrels file) given as the corpus is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ragkit.data.chunking import Chunk
from ragkit.errors import CorpusError, RagkitError
from ragkit.retrieval.colbert.train import zscore

QUESTION_SYSTEM = "You write search questions. Reply with one short question and nothing else."
# (asking SmolLM2-135M to start with a given word, for variety, made two thirds of its replies non-questions)
QUESTION_PROMPT = ("Passage:\n{passage}\n\nWrite one question that this passage answers. The question must make "
                   "sense without the passage.")
# several in one reply: the passage is read once for all of them; SmolLM2-135M on 32 cranfield chunks wrote
# 84 usable questions in 49 s this way vs 20 in 36 s one at a time (fewer about "this passage", too)
QUESTIONS_SYSTEM = "You write search questions. Reply with the questions only, one per line."
QUESTIONS_PROMPT = ("Passage:\n{passage}\n\nWrite {n} different questions that this passage answers, one per line. "
                    "Each question must make sense without the passage.")
GENERIC = re.compile(r"\b(this|the|that) (passage|text|article|question|context|document|excerpt)\b|\bthe answer\b", re.I)
TEACHERS = ("hybrid", "colbert", "both")


@dataclass
class TuneConfig:
    queries: int = 0              # chunks to write questions for; 0: auto (a quarter of the chunks, 100..1000)
    questions_per_chunk: int = 3  # questions the LLM writes per chunk, in one reply
    llm: str = "default"          # the question writer: any model reference (local), see also llm_config
    max_new_tokens: int = 40      # per question
    passage_words: int = 180      # the chunk text shown to the LLM is cut to this many words
    min_words: int = 4
    max_words: int = 32
    round_trip_k: int = 20        # keep a question when its chunk is in the untuned hybrid's top k
    candidates: int = 6           # positive + hard negatives per question (BM25 and dense tops)
    teacher: str = "hybrid"       # hybrid, colbert or both
    margin: float = 1.0           # the positive's teacher score is at least the best negative's + margin
    heldout: float = 0.2          # share of kept questions held out for choosing fusion settings
    dense_steps: int = 0          # 0: auto (about 2 epochs over the training questions, 100..400)
    dense_batch: int = 8            # questions per step (each with `candidates` passages: memory grows with both)
    dense_lr: float = 2e-5
    dense_max_tokens: int = 0     # passage length while training; 0: the model's own, what the index encodes (a
                                  # shorter cut hides the part of a long chunk a question was written from)
    precision: str = "auto"       # training matmuls: bfloat16 (autocast; weights and optimizer stay float32),
                                  # float32, or auto (bfloat16 where the CPU has native bf16 instructions);
                                  # a local question writer that tune loads itself runs in bfloat16 too
    student_temperature: float = 0.05
    colbert: bool = True
    colbert_steps: int = 0        # 0: as dense_steps
    workers: int = 16             # concurrent generations (one shared batch on a local model)
    seed: int = 0
    threads: int = 0              # torch threads for training; 0: all cores

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {self.teacher!r}; choose one of {', '.join(TEACHERS)}")
        if self.precision not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"unknown precision {self.precision!r}; choose auto, bfloat16 or float32")
        if self.questions_per_chunk < 1:
            raise ValueError(f"questions_per_chunk must be at least 1, got {self.questions_per_chunk}")
        if not 0.0 <= self.heldout < 1.0:
            raise ValueError(f"heldout must be in [0, 1), got {self.heldout}")


# -- leak guard ------------------------------------------------------------------------------------------
def check_corpus_input(path: str | Path) -> Path:
    """`path` if it is a corpus: a corpus file or folder, or a BEIR folder (read through its
    corpus.jsonl only); never a queries file or relevance judgements (a `CorpusError`)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_file() and (name.startswith("queries") or "qrels" in {p.name for p in path.parents} or name.endswith(".tsv")):
        raise CorpusError(f"refusing {path} as a corpus: it holds queries or relevance judgements; ragkit tune learns "
                          "from the documents alone (give the corpus file or the BEIR folder)")
    return path


# -- 1. query synthesis ----------------------------------------------------------------------------------
def question_prompt(chunk: Chunk, config: TuneConfig) -> list[dict]:
    """The chat messages asking for `config.questions_per_chunk` questions about `chunk` (its text cut to
    `config.passage_words` words)."""
    words = chunk.text.split()
    passage = " ".join(words[:config.passage_words]) + (" ..." if len(words) > config.passage_words else "")
    if chunk.title:
        passage = f"{chunk.title}\n{passage}"
    n = config.questions_per_chunk
    if n == 1:
        return [{"role": "system", "content": QUESTION_SYSTEM},
                {"role": "user", "content": QUESTION_PROMPT.format(passage=passage)}]
    return [{"role": "system", "content": QUESTIONS_SYSTEM},
            {"role": "user", "content": QUESTIONS_PROMPT.format(passage=passage, n=n)}]


def question_generation(config: TuneConfig):
    """Greedy decoding, `max_new_tokens` per question; one question stops at a blank line, several are
    read line by line."""
    from ragkit.generation.llm.base import GenerationConfig

    n = config.questions_per_chunk
    return GenerationConfig(max_new_tokens=config.max_new_tokens * n, temperature=0.0, stop=["\n\n"] if n == 1 else [])


def clean_question(raw: str) -> str:
    """The first question in the LLM's reply: up to and including the first "?", quotes and
    list markers stripped; "" when there is none."""
    text = raw.strip().strip('"').strip()
    text = re.sub(r"^(question\s*\d*\s*[:.-]\s*|\d+[.)]\s*|[-*]\s*)", "", text, flags=re.I).strip()
    if "?" not in text:
        return ""
    q = text[: text.index("?") + 1]
    q = q.splitlines()[-1] if "\n" in q else q
    return " ".join(q.split()).strip('"').strip()


def parse_questions(raw: str, n: int) -> list[str]:
    """Up to `n` distinct questions from a reply: with n 1 the first (`clean_question`), else the first
    question of each line that has one."""
    if n == 1:
        q = clean_question(raw)
        return [q] if q else []
    found: list[str] = []
    for line in raw.splitlines():
        q = clean_question(line)
        if q and q not in found:
            found.append(q)
    return found[:n]


def synthesize_questions(chunks: Sequence[Chunk], llm, out_file: Path, config: TuneConfig,
                         progress: Callable[[int], None] | None = None) -> list[dict]:
    """`config.questions_per_chunk` questions per chunk, one reply per chunk appended to `out_file`
    (JSON lines: chunk_id, doc_id, n, raw, questions) as they come; chunks already there (asked for as
    many questions) are not asked again. Returns one record per question (chunk_id, doc_id, raw,
    question), in chunk order; a reply without a question gives one record with question "" (counted
    by the filter)."""
    n = config.questions_per_chunk
    done: dict[str, dict] = {}
    for r in _read_lines(out_file):
        if "questions" not in r:  # a cache written one question per chunk
            r = {**r, "n": 1, "questions": [r["question"]] if r.get("question") else []}
        if r.get("n", 1) == n:
            done[r["chunk_id"]] = r
    todo = [c for c in chunks if c.id not in done]
    if progress is not None and len(chunks) - len(todo):
        progress(len(chunks) - len(todo))
    gen = question_generation(config)
    if hasattr(llm, "enable_batching") and config.workers > 1:
        llm.enable_batching(max_batch=config.workers, max_queue=4 * config.workers)

    def ask(chunk: Chunk) -> dict:
        raw = llm.generate(question_prompt(chunk, config), gen).text
        return {"chunk_id": chunk.id, "doc_id": chunk.doc_id, "n": n, "raw": raw, "questions": parse_questions(raw, n)}

    with open(out_file, "a", encoding="utf-8") as f, ThreadPoolExecutor(max(1, config.workers)) as pool:
        for start in range(0, len(todo), 64):
            for rec in pool.map(ask, todo[start:start + 64]):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["chunk_id"]] = rec
                if progress is not None:
                    progress(1)
            f.flush()
    records = []
    for c in chunks:
        if c.id in done:
            r = done[c.id]
            base = {"chunk_id": r["chunk_id"], "doc_id": r["doc_id"], "raw": r["raw"]}
            records += [{**base, "question": q} for q in r["questions"] or [""]]
    return records


def split_by_chunk(records: Sequence[dict], share: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(held, rest): whole chunks' questions held out until about `share` of the questions are, so no
    held-out question has a sibling about the same chunk in training."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["chunk_id"], []).append(r)
    order = list(groups)
    rng.shuffle(order)
    held: list[dict] = []
    rest: list[dict] = []
    target = int(round(share * len(records)))
    for cid in order:
        (held if len(held) < target else rest).extend(groups[cid])
    rng.shuffle(rest)
    return held, rest


def _count_lines(path: Path) -> int:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip()) if path.exists() else 0


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()] if path.exists() else []


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def filter_questions(records: Sequence[dict], index, config: TuneConfig,
                     round_trip: bool = True) -> tuple[list[dict], dict]:
    """Keep well-formed, distinct questions (and, with `round_trip`, only those whose chunk the untuned
    hybrid finds in its top `round_trip_k`); (kept, counts)."""
    counts = {"generated": len(records), "no_question": 0, "length": 0, "generic": 0, "copied": 0,
              "duplicate": 0, "round_trip": 0}
    seen: set[str] = set()
    shaped = []
    for r in records:
        q = r["question"]
        if not q:
            counts["no_question"] += 1
            continue
        n = len(q.split())
        if not config.min_words <= n <= config.max_words:
            counts["length"] += 1
            continue
        if GENERIC.search(q):  # "What is the purpose of this passage?": needs the passage to make sense
            counts["generic"] += 1
            continue
        key = _norm(q)
        chunk_text = _norm(index.chunks[r["chunk_id"]].text)
        if key.rstrip() and key in chunk_text and n > 6:  # a sentence of the chunk with a "?" added
            counts["copied"] += 1
            continue
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        shaped.append(r)
    if not round_trip:
        counts["kept"] = len(shaped)
        return shaped, counts
    kept = []
    hybrid = index.retriever("hybrid" if len(index.retrievers) > 1 else None)
    for r in shaped:
        ids = [cid for cid, _ in hybrid.search(r["question"], config.round_trip_k)]
        if r["chunk_id"] in ids:
            kept.append({**r, "round_trip_rank": ids.index(r["chunk_id"]) + 1})
        else:
            counts["round_trip"] += 1
    counts["kept"] = len(kept)
    return kept, counts


# -- 2. pseudo-labels --------------------------------------------------------------------------------------
def pseudo_label(questions: Sequence[dict], index, config: TuneConfig) -> list[dict]:
    """Per question: candidates (the positive first, then hard negatives alternating from BM25's and
    dense's tops) and the teacher's scores for them (`colbert`/`both` need a ColBERT retriever in
    `index`)."""
    bm25, dense = index.retrievers["bm25"], index.retrievers["dense"]
    colbert = index.retrievers.get("colbert")
    if config.teacher != "hybrid" and colbert is None:
        raise RagkitError(f"teacher {config.teacher!r} needs an index with a colbert retriever")
    bm25_row = {cid: i for i, cid in enumerate(bm25.ids)}
    ids, vectors = dense.store.export()
    dense_row = {cid: i for i, cid in enumerate(ids)}
    qvecs = dense.encoder.encode([r["question"] for r in questions]) if questions else np.zeros((0, 1))
    out = []
    depth = 4 * config.candidates
    for r, qv in zip(questions, qvecs):
        q, pos = r["question"], r["chunk_id"]
        b = [cid for cid, _ in bm25.search(q, depth) if cid != pos]
        d = [cid for cid, _ in dense.store.search(qv[None, :], depth)[0] if cid != pos]
        negs: list[str] = []
        for pair in zip(b + [None] * (len(d) - len(b)), d + [None] * (len(b) - len(d))):
            for cid in pair:  # alternate: the hardest of each
                if cid is not None and cid not in negs and len(negs) < config.candidates - 1:
                    negs.append(cid)
        cands = [pos, *negs]
        if len(cands) < 2:
            continue
        scores = np.zeros(len(cands))
        if config.teacher in ("hybrid", "both"):
            bs = bm25.scores(q, "chunk")[[bm25_row[c] for c in cands]]
            cs = vectors[[dense_row[c] for c in cands]] @ qv
            scores += zscore(np.asarray(bs, dtype=np.float64)) + zscore(np.asarray(cs, dtype=np.float64))
        if config.teacher in ("colbert", "both"):
            scores += zscore(np.asarray(colbert.score(q, cands), dtype=np.float64))
        scores[0] = max(scores[0], scores[1:].max() + config.margin)
        out.append({"question": q, "chunk_id": pos, "candidates": cands,
                    "scores": [round(float(x), 4) for x in scores]})
    return out


# -- 3. students --------------------------------------------------------------------------------------------
def auto_steps(n_examples: int, batch: int) -> int:
    """Training steps when none are given: about two epochs over the examples, 100 to 400 (the questions
    come three per chunk: each chunk is a positive about six times)."""
    return int(min(400, max(100, round(2 * n_examples / batch))))


def training_dtype(precision: str):
    """The autocast dtype for training matmuls: `precision`, or with "auto" bfloat16 where the CPU has
    native bf16 (AVX-512 BF16 / AMX: a training step ~2x faster than float32), else float32."""
    import torch

    if precision == "auto":
        from ragkit.runtime import native_bf16

        return torch.bfloat16 if native_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[precision]


def train_dense(examples: Sequence[dict], texts: dict[str, str], base: str, out_dir: Path, config: TuneConfig,
                show_progress: bool | None = None) -> dict:
    """KL distillation of the teacher's candidate scores into a sentence-transformers bi-encoder;
    resumable from `out_dir/train_state`; the model is saved to `out_dir` (a sentence-transformers folder)."""
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer

    from ragkit.retrieval.encoder import resolve_model_path
    from ragkit.runtime import torch_threads
    from ragkit.training import read_state, train_loop

    if not examples:
        raise CorpusError("no training questions survived the filters: nothing to train the dense encoder on")
    out_dir = Path(out_dir)
    state_dir = out_dir / "train_state"
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = config.dense_steps or auto_steps(len(examples), config.dense_batch)
    record = out_dir / "ragkit_training.json"  # written last: a finished run with the same data is reused
    fingerprint = {"steps": steps, "examples": len(examples), "base": base,
                   "data": hashlib.sha256(json.dumps(list(examples), sort_keys=True).encode()).hexdigest()[:16],
                   "config": {k: v for k, v in asdict(config).items() if k.startswith("dense") or k in
                              ("candidates", "teacher", "margin", "student_temperature", "precision", "seed")}}
    if record.is_file() and not state_dir.exists():
        done = json.loads(record.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fingerprint:
            return {**done["summary"], "reused": True}
    record.unlink(missing_ok=True)
    with torch_threads(config.threads or os.cpu_count() or 1):
        torch.manual_seed(config.seed)
        source = str(state_dir) if read_state(state_dir) is not None else resolve_model_path(base)[1]
        model = SentenceTransformer(source, device="cpu")
        max_len = model.max_seq_length
        model.max_seq_length = min(max_len, config.dense_max_tokens or max_len)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.dense_lr)
        order = np.random.default_rng(config.seed).permutation(np.resize(np.arange(len(examples)),
                                                                         steps * config.dense_batch))
        warm = max(1, steps // 10)

        prepare = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6: preprocess

        dtype = training_dtype(config.precision)

        def embed(batch_texts: list[str]) -> torch.Tensor:
            feats = prepare(batch_texts)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                states = model(feats)["sentence_embedding"]
            return torch.nn.functional.normalize(states.float(), dim=-1)

        def step_loss(step: int) -> torch.Tensor:
            batch = [examples[i] for i in order[step * config.dense_batch:(step + 1) * config.dense_batch]]
            q = embed([e["question"] for e in batch])
            p = embed([texts[cid] for e in batch for cid in e["candidates"]])
            sizes = [len(e["candidates"]) for e in batch]
            rows = torch.split(p, sizes)
            pad = torch.nn.utils.rnn.pad_sequence
            student = pad([r @ q[i] / config.student_temperature for i, r in enumerate(rows)], batch_first=True,
                          padding_value=-1e4)
            teacher = pad([torch.tensor(e["scores"], dtype=torch.float32) for e in batch], batch_first=True,
                          padding_value=-1e4)
            return torch.nn.functional.kl_div(torch.log_softmax(student, -1), torch.softmax(teacher, -1),
                                              reduction="batchmean")

        r = train_loop(model, opt, steps, step_loss, state_dir,
                       schedule=lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm)),
                       save_every=max(20, steps // 5), save_model=lambda folder: model.save(str(folder)),
                       seeds={"seed": config.seed}, extra={"config": asdict(config)}, desc="training dense",
                       progress=show_progress)
        model.max_seq_length = max_len
        model.save(str(out_dir))
        shutil.rmtree(state_dir, ignore_errors=True)
    losses = r["losses"]
    summary = {"steps": steps, "resumed_from_step": r["resumed_from_step"], "examples": len(examples),
            "loss_first10": round(float(np.mean(losses[:10])), 4), "loss_last10": round(float(np.mean(losses[-10:])), 4),
            "seconds": round(r["seconds"], 1), "steps_per_s": round((steps - r["resumed_from_step"]) / max(r["seconds"], 1e-9), 3),
            "threads": r["threads"], "precision": str(dtype).removeprefix("torch.")}
    record.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}, indent=2) + "\n", encoding="utf-8")
    return summary


def train_colbert_student(examples: Sequence[dict], texts: dict[str, str], out_dir: Path, config: TuneConfig,
                          show_progress: bool | None = None) -> dict:
    """The same pseudo-labels distilled into the ColBERT checkpoint (ragkit's ColBERT trainer: the
    untrained MiniLM's own token states, only the projection trained, encoder states cached)."""
    from ragkit.retrieval.colbert.train import TrainConfig, train_colbert

    n = config.candidates
    scored = [(e["question"], tuple(texts[c] for c in e["candidates"]), tuple(e["scores"]))
              for e in examples if len(e["candidates"]) == n]
    if not scored:
        raise CorpusError(f"no training question has {n} candidates: nothing to train ColBERT on")
    steps = config.colbert_steps or config.dense_steps or auto_steps(len(scored), 8)
    tc = TrainConfig(init="identity", freeze_layers=-1, steps=steps, batch_size=8, projection_lr=2e-3,
                     query_augmentation=False, seed=config.seed, threads=config.threads, save_every=max(20, steps // 5))
    r = train_colbert(scored, out_dir, tc, show_progress=show_progress)
    return {k: r[k] for k in ("steps", "resumed_from_step", "triples", "seconds", "threads")} | {
        "loss_first10": round(r["loss_first10"], 5), "loss_last10": round(r["loss_last10"], 5),
        "steps_per_s": round((r["steps"] - r["resumed_from_step"]) / max(r["seconds"], 1e-9), 3)}


# -- 4. each student checked on held-out synthetic questions ----------------------------------------------
def source_rr(questions: Sequence[dict], ranked_docs: Callable[[dict], Sequence[str]], k: int = 10) -> np.ndarray:
    """Per question, the reciprocal rank of its source document among the first k distinct documents
    `ranked_docs(question)` returns (0 when it is not there)."""
    out = np.zeros(len(questions))
    for i, r in enumerate(questions):
        docs = list(dict.fromkeys(ranked_docs(r)))[:k]
        out[i] = 1.0 / (docs.index(r["doc_id"]) + 1) if r["doc_id"] in docs else 0.0
    return out


def source_mrr(questions: Sequence[dict], ranked_docs: Callable[[dict], Sequence[str]], k: int = 10) -> float:
    """Mean of `source_rr`, rounded to 4 places."""
    return round(float(source_rr(questions, ranked_docs, k).mean()), 4) if questions else 0.0


def clearly_better(rr: np.ndarray, than: np.ndarray, z: float = 2.0) -> bool:
    """Whether per-question reciprocal ranks `rr` beat `than` by more than `z` standard errors of their
    paired difference (a few dozen synthetic questions: a small lead is noise)."""
    d = rr - than
    if len(d) < 2 or d.mean() <= 0:
        return False
    se = d.std(ddof=1) / np.sqrt(len(d))
    return bool(d.mean() > z * se)


def heldout_check(questions: Sequence[dict], index, dense_dir: Path, colbert_dir: Path | None,
                  texts: dict[str, str], depth: int = 30, k: int = 10) -> dict:
    """Untuned vs tuned, per student, on held-out synthetic questions (never judged ones): MRR@k of
    each question's source document when the untuned hybrid's top `depth` chunks are reordered by the
    student (only those pools are encoded, not the corpus). A student that loses to its untuned
    self is reported `kept: "untuned"` (a few hundred synthetic questions can overfit it)."""
    from ragkit.retrieval.encoder import SentenceEncoder
    from ragkit.retrieval.index import Hit
    from ragkit.retrieval.rerank import ColBERTReranker

    hybrid = index.retriever("hybrid" if len(index.retrievers) > 1 else None)
    pools = {r["question"]: [cid for cid, _ in hybrid.search(r["question"], depth)] for r in questions}
    doc_of = {c.id: c.doc_id for c in index.chunks.get_many(sorted({c for p in pools.values() for c in p})).values()}

    def mrr(scores_of: Callable[[str, list[str]], Sequence[float]]) -> float:
        def ranked_docs(r: dict) -> list[str]:
            pool = pools[r["question"]]
            s = scores_of(r["question"], pool)
            return [doc_of[pool[i]] for i in sorted(range(len(pool)), key=lambda i: -s[i])]
        return source_mrr(questions, ranked_docs, k)

    def dense_scores(encoder) -> Callable:
        ids = sorted(doc_of)
        row = {c: i for i, c in enumerate(ids)}
        vectors = encoder.encode([texts[c] for c in ids])
        return lambda q, pool: (vectors[[row[c] for c in pool]] @ encoder.encode_query(q)[0]).tolist()

    def colbert_scores(reranker) -> Callable:
        hit = lambda c: Hit(0, 0.0, c, doc_of[c], "", texts[c], "", 0, 0)  # noqa: E731 - texts: title + text
        return lambda q, pool: reranker.scores(q, [hit(c) for c in pool])

    out = {"questions": len(questions), "pool_depth": depth}
    untuned = index.retrievers["dense"].encoder
    out["dense"] = {"untuned": mrr(dense_scores(untuned)), "tuned": mrr(dense_scores(SentenceEncoder.from_pretrained(str(dense_dir))))}
    if colbert_dir is not None:
        base = index.config.colbert.checkpoint or "default"
        out["colbert"] = {"untuned": mrr(colbert_scores(ColBERTReranker(base))),
                          "tuned": mrr(colbert_scores(ColBERTReranker(str(colbert_dir))))}
    for name in ("dense", "colbert"):
        if name in out:
            out[name]["kept"] = "tuned" if out[name]["tuned"] >= out[name]["untuned"] else "untuned"
    return out


# -- 5. fusion chosen on synthetic questions --------------------------------------------------------------
FUSION_GRID = [
    {"members": ["bm25", "dense"], "method": "rrf", "rrf_k": k, "weights": {"bm25": round(1 - w, 2), "dense": w}}
    for k in (60, 10) for w in (0.5, 0.3, 0.7)
] + [{"members": ["bm25", "dense"], "method": "weighted", "weights": {"bm25": round(1 - w, 2), "dense": w}}
     for w in (0.5, 0.3, 0.7)]  # the first is ragkit's default: it wins ties


def fusion_config(setting: dict):
    """The `FusionConfig` of a fusion setting of `FUSION_GRID` (or a chosen one)."""
    from ragkit.retrieval.hybrid import FusionConfig

    return FusionConfig(method=setting["method"], rrf_k=setting.get("rrf_k", 60), weights=setting["weights"])


def choose_fusion(index, questions: Sequence[dict], k: int = 10) -> dict:
    """Score the hybrid settings of `FUSION_GRID`, each member alone, and ColBERT reranking of the
    chosen hybrid (when the index has ColBERT; depths 20 and 50), by MRR@k of each held-out question's
    source document; return the table and the choice. ragkit's default fusion (the grid's first) stays
    unless another setting is `clearly_better` on these questions; reranking is added only when it is
    clearly better than the chosen fusion without it; a member alone, when it beats every fusion
    clearly."""
    from ragkit.retrieval.hybrid import HybridRetriever, document_of

    def rr(search) -> np.ndarray:
        return source_rr(questions, lambda r: [document_of(cid) for cid, _ in search(r["question"])], k)

    def hybrid_of(s: dict) -> HybridRetriever:
        return HybridRetriever({m: index.retrievers[m] for m in s["members"]}, fusion_config(s))

    rows = []
    for s in FUSION_GRID:
        h = hybrid_of(s)
        rows.append({"setting": s, "rr": rr(lambda q, h=h: h.search(q, 5 * k))})
    for name in ("bm25", "dense"):
        rows.append({"setting": {"members": [name]}, "rr": rr(lambda q, n=name: index.retrievers[n].search(q, 5 * k))})
    default = rows[0]
    best = max(rows, key=lambda r: r["rr"].mean())  # the first of equals
    chosen = best if best is default or clearly_better(best["rr"], default["rr"]) else default
    colbert = index.retrievers.get("colbert")
    if colbert is not None and len(chosen["setting"]["members"]) > 1:
        from ragkit.retrieval.evaluate import rerank_ranking

        s, h = chosen["setting"], hybrid_of(chosen["setting"])
        reranked = []
        for depth in (20, 50):
            reranked.append({"setting": {**s, "colbert_rerank_depth": depth}, "rr": rr(
                lambda q, d=depth: rerank_ranking(colbert, q, h.search(q, 5 * k), d))})
        rows += reranked
        top = max(reranked, key=lambda r: r["rr"].mean())
        if clearly_better(top["rr"], chosen["rr"]):
            chosen = top
    table = [{"setting": r["setting"], "mrr@10": round(float(r["rr"].mean()), 4)} for r in rows]
    return {"questions": len(questions), "candidates": table, "chosen": chosen["setting"],
            "chosen_mrr@10": round(float(chosen["rr"].mean()), 4),
            "best": best["setting"], "rule": "the default fusion unless another setting leads it by more than 2 "
                                             "standard errors of the paired per-question difference"}


# -- the whole run ---------------------------------------------------------------------------------------
def tune(corpus, out_dir: str | Path, config: TuneConfig | None = None, llm=None, encoder: str = "default",
         show_progress: bool | None = None, log: Callable[[str], None] | None = None, index=None,
         return_index: bool = False):
    """Synthesise questions, pseudo-label, train the dense (and ColBERT) students and choose fusion
    settings, all from `corpus` (a corpus path, a BEIR folder, or documents). Writes `out_dir`:
    queries.jsonl (cached questions), dense/, colbert/, fusion.json and tune.json (what was done, with
    counts and times). Re-running with the same `out_dir` resumes.

    `index`: an untuned index of the same documents (BM25 + dense, and ColBERT for those teachers) to
    use instead of building one. Returns the summary, or (summary, tuned index) with `return_index`
    (the index the fusion was chosen on, its config's fusion set to the choice)."""
    from ragkit.data.corpus import load_corpus
    from ragkit.progress import progress_bar
    from ragkit.retrieval.encoder import DEFAULT_ENCODER
    from ragkit.retrieval.index import Index, IndexConfig
    from ragkit.runtime import torch_threads

    config = config or TuneConfig()
    say = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = load_corpus(check_corpus_input(corpus)) if isinstance(corpus, (str, Path)) else list(corpus)  # BEIR: corpus.jsonl
    if not docs:
        raise CorpusError("the corpus is empty: nothing to tune on")
    base = DEFAULT_ENCODER if encoder == "default" else encoder
    summary: dict = {"corpus_documents": len(docs), "config": asdict(config), "encoder_base": base}
    t0 = time.perf_counter()
    if index is None:
        with torch_threads(config.threads or os.cpu_count() or 1):
            index = Index(IndexConfig(retrievers=["bm25", "dense", *(["colbert"] if config.teacher != "hybrid"
                                                                       else [])], encoder=base))
            index.add(docs, show_progress=show_progress)
    summary["index_s"] = round(time.perf_counter() - t0, 1)
    chunks = list(index.chunks)
    n = config.queries or int(min(1000, max(100, len(chunks) // 4)))
    rng = random.Random(config.seed)
    sample = rng.sample(chunks, min(n, len(chunks)))

    # 1. questions
    owned = llm is None or isinstance(llm, str)
    if owned:
        from ragkit.generation.loader import load_llm

        # bf16 prompts: 1.6 vs 1.2 questions/s for SmolLM2 (16 at a time) on an AVX-512 BF16 CPU
        import torch

        bf16 = training_dtype(config.precision) == torch.bfloat16
        llm = load_llm(llm or config.llm, dtype="bfloat16" if bf16 else "auto")
    model_id = getattr(llm, "model_id", str(llm))
    say(f"writing questions for {len(sample)} chunks with {model_id}")
    t0 = time.perf_counter()
    cached = _count_lines(out / "queries.jsonl")
    with progress_bar(f"writing questions ({model_id})", len(sample), show_progress) as advance:
        records = synthesize_questions(sample, llm, out / "queries.jsonl", config, advance)
    synth_s = time.perf_counter() - t0
    fresh = _read_lines(out / "queries.jsonl")[cached:]  # the replies asked for now
    new, written = len(fresh), sum(len(r["questions"]) for r in fresh)
    summary["synthesis"] = {"llm": model_id, "chunks": len(sample), "questions_per_chunk": config.questions_per_chunk,
                            "generated_now": new, "cached": len(sample) - new,
                            "questions": sum(1 for r in records if r["question"]),
                            "seconds": round(synth_s, 1),
                            "questions_per_s": round(written / synth_s, 3) if new and synth_s > 0 else None,
                            "chunks_per_s": round(new / synth_s, 3) if new and synth_s > 0 else None}
    if owned:
        del llm  # its memory back before training
    with torch_threads(1):
        shaped, counts = filter_questions(records, index, config, round_trip=False)
        # held out before the round trip: fusion is then chosen on questions no retriever was picked by;
        # by chunk, so training never saw another question about a held-out question's chunk
        held, train = split_by_chunk(shaped, config.heldout, rng)
        train, trip = filter_questions(train, index, config)
    counts.update({"heldout": len(held), "round_trip": trip["round_trip"], "kept": len(train)})
    summary["filter"] = counts
    say(f"{len(held)} questions held out for fusion; {len(train)} kept for training ({counts})")

    # 2. pseudo-labels
    t0 = time.perf_counter()
    with torch_threads(1):
        examples = pseudo_label(train, index, config)
    summary["labels"] = {"examples": len(examples), "teacher": config.teacher, "candidates": config.candidates,
                         "seconds": round(time.perf_counter() - t0, 1)}
    with open(out / "examples.jsonl", "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    texts = {c.id: c.indexed_text for c in chunks}

    # 3. students
    summary["dense"] = train_dense(examples, texts, base, out / "dense", config, show_progress)
    if config.colbert:
        summary["colbert"] = train_colbert_student(examples, texts, out / "colbert", config, show_progress)

    # 4. each student against its untuned self on the held-out questions; 5. fusion on them
    keep = {"dense": "tuned", "colbert": "tuned"}
    if held:
        with torch_threads(1):
            check = heldout_check(held, index, out / "dense", out / "colbert" if config.colbert else None, texts)
        summary["heldout_check"] = check
        keep.update({n: check[n]["kept"] for n in keep if n in check})
        for n, verdict in keep.items():
            if verdict == "untuned":
                say(f"the tuned {n} retriever lost to the untuned one on the held-out synthetic questions "
                    f"(MRR@10 {check[n]['tuned']} vs {check[n]['untuned']}): the tuned index keeps the untuned {n}")
    summary["use"] = keep
    tuned = None
    if held or return_index:
        members = ["bm25", "dense", *(["colbert"] if config.colbert else [])]
        tuned = Index(IndexConfig(retrievers=members,
                                  encoder=str(out / "dense") if keep["dense"] == "tuned" else base,
                                  colbert=replace(index.config.colbert, checkpoint=str(out / "colbert"))
                                  if config.colbert and keep["colbert"] == "tuned" else index.config.colbert))
        with torch_threads(config.threads or os.cpu_count() or 1):
            tuned = _index_reusing(tuned, index, docs, members, keep, show_progress)
    if held:
        with torch_threads(1):
            fusion = choose_fusion(tuned, held)
        (out / "fusion.json").write_text(json.dumps(fusion, indent=2) + "\n")
        summary["fusion"] = {"chosen": fusion["chosen"], "chosen_mrr@10": fusion["chosen_mrr@10"],
                             "heldout_questions": len(held)}
        chosen = fusion["chosen"]
        if len(chosen["members"]) > 1:
            tuned.config.fusion = fusion_config(chosen)
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    return (summary, tuned) if return_index else summary


def _index_reusing(tuned, untuned, docs, members: list[str], keep: dict, show_progress: bool | None):
    """`tuned` filled with `docs`, taking the retrievers it shares with `untuned` (BM25, and a student
    kept untuned) from it instead of indexing them again; a full build when the chunks differ."""
    from ragkit.retrieval.index import Index

    same = [m for m in members if m in untuned.retrievers and (m == "bm25" or keep.get(m) == "untuned")
            and (m != "colbert" or untuned.config.colbert == tuned.config.colbert)]
    if same == members:  # nothing new to encode: BM25 is rebuilt (cheap), so the index has its own chunks
        same.remove("bm25")
    build = [m for m in members if m not in same]
    if not same or "dense" not in build and tuned.config.encoder != untuned.config.encoder:
        tuned.add(docs, show_progress=show_progress)
        return tuned
    colbert = tuned.retrievers.get("colbert")  # its model, already loaded: not loaded again
    part = Index(replace(tuned.config, retrievers=build), encoder=tuned.encoder,
                 colbert=getattr(colbert, "model", None) if "colbert" in build else None)
    part.add(docs, show_progress=show_progress)
    if [c.id for c in part.chunks] != [c.id for c in untuned.chunks]:  # another chunking: index all
        tuned.add(docs, show_progress=show_progress)
        return tuned
    part.config = tuned.config
    part.retrievers = {m: part.retrievers[m] if m in build else untuned.retrievers[m] for m in members}
    part.timings.update({m: untuned.timings.get(m, 0.0) for m in same})  # what indexing them cost, once
    return part
