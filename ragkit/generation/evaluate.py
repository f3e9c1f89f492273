"""QA evaluation on BEIR folders with `answers.jsonl` (e.g. PubMedQA: yes/no/maybe decisions).

Three conditions: no retrieval (the LLM alone), with retrieval (the pipeline's index), and with the
gold passages of the qrels. With black-box domain adapters attached to the pipeline (prompt
adapters, e.g. kind `knowledge`) three more compare the knowledge section on the same questions:
`knowledge` (retrieval + the filtered knowledge section), `knowledge_unfiltered` (the same with each
adapter's filter off: its first candidates, unchecked) and `closed_knowledge` (no retrieval, the
knowledge section alone). The other conditions never get the section. White-box adapters (logits
adapters on the local LLM) apply in every condition: `HFCausalLM.next_token_logits` runs their
processors on the final position's scores. Yes/no/maybe questions are scored by the LLM's next-token preference
among the label words (one forward pass, deterministic); free-text answers by exact match and token
F1 (SQuAD normalisation). Groundedness, a cheap small-model judge: each generated answer sentence's
best cosine similarity (packaged MiniLM) to the sources it cites (all sources when it cites none).
"""
from __future__ import annotations

import json
import math
import re
import string
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Sequence

from ragkit.data.corpus import Document, load_beir_corpus, load_beir_judged
from ragkit.errors import CorpusError
from ragkit.retrieval.index import Hit, Index
from ragkit.generation.llm.base import GenerationConfig
from ragkit.generation.pipeline import CITATION, Pipeline, parse_citations
from ragkit.progress import progress_bar

LABELS = ("yes", "no", "maybe")
CONDITIONS = ("closed", "retrieval", "gold", "knowledge", "knowledge_unfiltered", "closed_knowledge")
BASE_CONDITIONS = ("closed", "retrieval", "gold")
KNOWLEDGE_CONDITIONS = ("knowledge", "knowledge_unfiltered", "closed_knowledge")
LABEL_PROMPT = "{question}\n\nAnswer with one word: yes, no or maybe."


def load_answers(data_dir: str | Path) -> dict[str, dict]:
    path = Path(data_dir) / "answers.jsonl"
    if not path.exists():
        raise CorpusError("missing answers.jsonl (QA evaluation needs reference answers)", str(path))
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
                out[obj["_id"]] = obj
            except (ValueError, KeyError) as e:
                raise CorpusError(f"invalid answer line: {e}", str(path), n) from e
    return out


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or common == 0:
        return float(p == r)
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _label_token_ids(tokenizer) -> dict[str, list[int]]:
    """First token of each label word, in the spellings a model may start its answer with."""
    ids = {}
    for label in LABELS:
        variants = {label, label.capitalize(), " " + label, " " + label.capitalize()}
        ids[label] = sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in variants})
    return ids


def classify(pipeline: Pipeline, question: str, hits: list[Hit] | None,
             label_ids: dict[str, list[int]] | None = None, knowledge: str = "") -> str:
    """The label whose words the LLM's next token prefers (log-sum-exp over spellings);
    `label_ids` from `_label_token_ids`, computed here when not given. `knowledge`: a knowledge
    section's text for the prompt ("" none)."""
    import torch

    llm = pipeline.llm
    prompt_q = LABEL_PROMPT.format(question=question)
    if hits is None:
        messages = [{"role": "user", "content": _closed_prompt(pipeline, prompt_q, knowledge)}]
    else:
        messages = pipeline.prepare(prompt_q, hits, GenerationConfig(max_new_tokens=8), knowledge=knowledge).messages
    logits = llm.next_token_logits(messages)
    ids = label_ids or _label_token_ids(llm.tokenizer)
    scores = {lab: float(torch.logsumexp(logits[ids[lab]], 0)) for lab in LABELS}
    return max(scores, key=scores.get)


def _closed_prompt(pipeline: Pipeline, prompt: str, knowledge: str) -> str:
    """A no-retrieval prompt, with the knowledge section (cut to its token budget) before it."""
    if not knowledge:
        return prompt
    p = pipeline.config.prompt
    knowledge = pipeline._fit(knowledge, p.knowledge_max_tokens).rstrip()
    return f"{p.knowledge_header}\n{knowledge}\n\n{prompt}" if knowledge else prompt


def groundedness(encoder, answer: str, passages: Sequence[str]) -> float | None:
    """Mean over answer sentences of the best cosine similarity to any passage; None if nothing to judge."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", CITATION.sub("", answer)) if len(s.strip()) > 3]
    if not sentences or not passages:
        return None
    a = encoder.encode(sentences)
    p = encoder.encode(list(passages))
    return float((a @ p.T).max(axis=1).mean())



def default_conditions(pipeline: Pipeline) -> tuple[str, ...]:
    """closed, retrieval, gold; with prompt adapters: closed, retrieval, knowledge, knowledge_unfiltered."""
    if pipeline.prompt_adapters:
        return ("closed", "retrieval", "knowledge", "knowledge_unfiltered")
    return BASE_CONDITIONS


@contextmanager
def _filters(pipeline: Pipeline, on: bool):
    """Every prompt adapter's filter switched on or off for a condition."""
    with ExitStack() as stack:
        for a in pipeline.prompt_adapters:
            stack.enter_context(a.filtering(on))
        yield


def evaluate_qa(data_dir: str | Path, pipeline: Pipeline, split: str = "test", conditions: Sequence[str] | None = None,
                limit: int | None = None, explain_tokens: int = 48, show_progress: bool | None = None,
                keep_predictions: bool = False) -> dict:
    """Accuracy (labels) or EM/F1 (free text) per condition, and groundedness of generated answers.

    The retrieval condition needs `pipeline.index`; when it is None an index of the folder's corpus
    is built in memory with the pipeline's default settings. `conditions` default:
    `default_conditions(pipeline)`. `keep_predictions` adds each condition's label per question id.
    """
    data_dir = Path(data_dir)
    conditions = tuple(conditions or default_conditions(pipeline))
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; choose from {', '.join(CONDITIONS)}")
    wants_knowledge = [c for c in conditions if c in KNOWLEDGE_CONDITIONS]
    if wants_knowledge and not pipeline.prompt_adapters:
        raise ValueError(f"conditions {', '.join(wants_knowledge)} need a black-box adapter (e.g. kind knowledge) "
                         "attached to the pipeline: --adapter NAME or adapters: in the config")
    if "knowledge_unfiltered" in conditions:
        lacking = [a.name for a in pipeline.prompt_adapters if not hasattr(a, "filtering")]
        if lacking:
            raise ValueError(f"knowledge_unfiltered needs adapters whose filter can be switched off; "
                             f"{', '.join(lacking)} cannot")
    answers = load_answers(data_dir)
    judged, qrels = load_beir_judged(data_dir, split)
    queries = [(q, t) for q, t in judged.items() if q in answers]
    if limit:
        queries = queries[:limit]
    if not queries:
        raise CorpusError(f"no question has both qrels/{split}.tsv judgements and an answer", str(data_dir))
    docs: dict[str, Document] = {d.id: d for d in load_beir_corpus(data_dir)}
    if any(c in conditions for c in ("retrieval", "knowledge", "knowledge_unfiltered")) and pipeline.index is None:
        pipeline.index = Index.build(list(docs.values()), show_progress=show_progress)
    encoder = pipeline.index.encoder if pipeline.index is not None and pipeline.index.encoder is not None else None
    if encoder is None:
        from ragkit.retrieval.encoder import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained("default")
    labelled = all("final_decision" in answers[q] for q, _ in queries)
    label_ids = _label_token_ids(pipeline.llm.tokenizer) if labelled else None  # once, not per question
    results: dict[str, dict] = {}
    for cond in conditions:
        correct, f1s, ems, grounded, t0 = 0, [], [], [], time.perf_counter()
        predictions: Counter = Counter()
        by_id: dict[str, str] = {}
        knowledge_s, with_section, section_tokens = 0.0, 0, 0
        with progress_bar(f"QA ({cond})", len(queries), show_progress) as advance, \
                _filters(pipeline, cond != "knowledge_unfiltered"):
            for qid, question in queries:
                if cond in ("closed", "closed_knowledge"):
                    hits = None
                elif cond in ("retrieval", "knowledge", "knowledge_unfiltered"):
                    hits = pipeline.retrieve(question)
                else:
                    hits = [_gold_hit(docs[d], n) for n, d in enumerate(qrels[qid], start=1) if d in docs]
                knowledge = ""
                if cond in KNOWLEDGE_CONDITIONS:
                    tk = time.perf_counter()
                    knowledge = pipeline.knowledge(question, hits)
                    knowledge_s += time.perf_counter() - tk
                    with_section += bool(knowledge)
                    section_tokens += pipeline.llm.count_tokens(knowledge) if knowledge else 0
                ref = answers[qid]
                if labelled:
                    pred = classify(pipeline, question, hits, label_ids, knowledge)
                    predictions[pred] += 1
                    by_id[qid] = pred
                    correct += pred == ref["final_decision"]
                if not labelled or (explain_tokens and hits is not None):
                    gen = GenerationConfig(max_new_tokens=explain_tokens if labelled else pipeline.config.generation.max_new_tokens)
                    messages, sources, _ = (pipeline.pack(question, hits, gen, knowledge=knowledge) if hits is not None
                                            else ([{"role": "user", "content": _closed_prompt(pipeline, question,
                                                                                              knowledge)}], [], []))
                    text = pipeline.llm.generate(messages, gen).text
                    if not labelled:
                        refs = ref.get("answers") or [""]
                        ems.append(max(float(normalize(text) == normalize(r)) for r in refs))
                        f1s.append(max(token_f1(text, r) for r in refs))
                    if sources:
                        cited, _ = parse_citations(text, len(sources))
                        used = [s.text for s in sources if s.n in cited] or [s.text for s in sources]
                        g = groundedness(encoder, text, used)
                        if g is not None:
                            grounded.append(g)
                advance(1)
        n = len(queries)
        res: dict = {"questions": n, "seconds": round(time.perf_counter() - t0, 1)}
        if labelled:
            res["accuracy"] = round(correct / n, 4)
            res["predicted"] = dict(predictions)
        else:
            res["exact_match"] = round(sum(ems) / n, 4)
            res["token_f1"] = round(sum(f1s) / n, 4)
        if grounded:
            res["groundedness"] = round(sum(grounded) / len(grounded), 4)
        if cond in KNOWLEDGE_CONDITIONS:  # knowledge_s includes the SM's generation unless cached by an earlier condition
            res.update(knowledge_s=round(knowledge_s, 1), with_knowledge=with_section,
                       mean_knowledge_tokens=round(section_tokens / n, 1))
        if keep_predictions and labelled:
            res["by_question"] = by_id
        results[cond] = res
    return results


def _gold_hit(doc: Document, rank: int) -> Hit:
    return Hit(rank, math.inf, f"{doc.id}#gold", doc.id, doc.title, doc.text, doc.source or doc.id, 0, len(doc.text))
