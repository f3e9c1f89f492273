"""Black-box knowledge injection (Knowledge Card / BLADE / PKG style): a small domain model (SM)
writes background passages for the question, a filter keeps the trustworthy ones, and the pipeline
puts the survivors into the prompt as a labelled section ("Background knowledge (from a domain
model; may be wrong):"). The LLM is only prompted, so this works with every backend, remote
OpenAI-compatible ones included.

Candidates: one greedy continuation plus `samples` sampled ones (batched, seeded), each at most
`max_new_tokens` tokens, of the prompt `"Question: {question}\\nBackground:"` (the format
`background_corpus` writes for training the SM), cut at the end of the last whole sentence.

Filter (all with the packaged all-MiniLM-L6-v2, cosine of normalised embeddings):
1. degenerate text is dropped: fewer than `min_words` words, or fewer than half of its words distinct
   (a small model's loops);
2. relevance: cosine(question, candidate) >= `min_relevance`;
3. consistency with the retrieved passages, an NLI-free entailment proxy: the candidate's best
   cosine to any retrieved chunk >= `min_consistency` (skipped when there are no hits, e.g. closed
   book). It rejects text that drifts off the retrieved evidence's topic; it cannot tell a
   contradiction that uses the same words (no NLI model ships offline);
4. de-duplication: survivors sorted by relevance + consistency; one whose cosine to a kept
   passage is >= `max_duplicate` is dropped;
5. at most `max_passages` are kept.
With `filter: false` the first `max_passages` distinct candidates are kept in generation order
(greedy first): the same amount of text, unchecked.

An adapter folder of kind `knowledge` holds only `manifest.json`: `params.sm` names the SM — a
hub id or transformers folder, a peft LoRA folder (loaded onto its base and merged), a ragkit
adapter folder of kind `lora`/`full` (made by `ragkit adapter train`), or `default` (the packaged
SmolLM2-135M-Instruct) — relative paths are looked up beside the adapter folder, then under
`adapters/`. The other params are the generation and filter settings above; any of them can be
overridden per load (`load_adapter(NAME, filter=False)`, or `{adapter: NAME, min_relevance: 0.4}`
in a pipeline config).
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from ragkit.data.splits import word_ngrams
from ragkit.refs import resolve_folder_or_name
from ragkit.runtime import torch_threads
from ragkit.adaptation.base import AdapterError, PromptAdapter, new_manifest, write_adapter

KIND = "knowledge"
DEFAULT_PROMPT = "Question: {question}\nBackground:"
DEFAULT_PARAMS: dict[str, Any] = {
    "sm": "default",
    "prompt": DEFAULT_PROMPT,
    "chat": False,              # wrap the prompt in the SM's chat template (for instruction-tuned SMs)
    "samples": 3,               # sampled candidates besides the greedy one
    "max_new_tokens": 64,
    "temperature": 0.8,
    "top_p": 0.95,
    "seed": 0,
    "filter": True,
    "min_words": 8,
    "min_relevance": 0.3,
    "min_consistency": 0.3,
    "max_duplicate": 0.9,
    "max_passages": 2,
    "threads": 1,
}
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_ENCODER_LOCK = threading.Lock()
_ENCODER = None


def default_encoder():
    """The packaged MiniLM, loaded once per process."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            from ragkit.retrieval.encoder import SentenceEncoder

            _ENCODER = SentenceEncoder.from_pretrained("default")
        return _ENCODER


# -- loading the small model -------------------------------------------------------------------
def resolve_sm(ref: str, adapter_dir: Path | None = None) -> str:
    """An SM reference as something `load_sm` opens: an existing folder (as given, inside or beside
    the adapter folder, or under `adapters/`) or else the reference itself (a hub id / alias)."""
    return resolve_folder_or_name(ref, adapter_dir)


def load_sm(ref: str, threads: int | None = 1):
    """The small model as a `ragkit.generation.llm.hf.HFCausalLM`: a hub id / alias / transformers folder, a
    peft LoRA folder (merged onto its base), or a ragkit adapter folder of kind lora/full."""
    from ragkit.generation.loader import load_llm

    return load_llm(ref, threads=threads, prefill_threads=None)


# -- text helpers --------------------------------------------------------------------------------
def clean_candidate(text: str) -> str:
    """The generated text up to the end of its last whole sentence (stops at a new 'Question:')."""
    text = re.split(r"\n\s*(?:Question|Q)\s*:|\n{2,}", text, maxsplit=1)[0]
    text = " ".join(text.split())
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def is_degenerate(text: str, min_words: int) -> bool:
    words = text.lower().split()
    return len(words) < min_words or len(set(words)) < 0.5 * len(words)


class KnowledgeAdapter(PromptAdapter):
    """A domain SM writing filtered background passages for the prompt's knowledge section."""

    kind = KIND

    def __init__(self, manifest: dict | None = None, path: Path | None = None, sm=None, encoder=None) -> None:
        manifest = manifest or new_manifest(KIND, "default")
        super().__init__(manifest, path)
        unknown = sorted(set(manifest.get("params", {})) - set(DEFAULT_PARAMS))
        if unknown:
            raise AdapterError(f"{path or 'knowledge adapter'}: unknown parameter(s) {', '.join(unknown)}; "
                               f"known: {', '.join(DEFAULT_PARAMS)}")
        self.params = {**DEFAULT_PARAMS, **manifest.get("params", {})}
        self._sm, self._encoder = sm, encoder
        self._cache: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self.last: list[dict] = []  # the last call's candidates with their scores and verdicts

    # -- models ---------------------------------------------------------------------------------
    @property
    def sm(self):
        if self._sm is None:
            ref = resolve_sm(str(self.params["sm"]), self.path)
            self._sm = load_sm(ref, self.params["threads"])
        return self._sm

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = default_encoder()
        return self._encoder

    def describe(self) -> dict:
        return {**super().describe(), "params": self.params}

    @contextmanager
    def filtering(self, on: bool):
        """Temporarily switch the filter on or off (eval-qa's unfiltered condition)."""
        before = self.params["filter"]
        self.params["filter"] = on
        try:
            yield self
        finally:
            self.params["filter"] = before

    # -- candidates -----------------------------------------------------------------------------
    def candidates(self, question: str) -> list[str]:
        """Greedy + `samples` sampled background passages (cached per question: the same
        candidates whatever the filter settings)."""
        with self._lock:
            if question in self._cache:
                self._cache.move_to_end(question)
                return list(self._cache[question])
        out = self._generate(question)
        with self._lock:
            self._cache[question] = out
            while len(self._cache) > 512:
                self._cache.popitem(last=False)
        return list(out)

    def _generate(self, question: str) -> list[str]:
        import torch

        from ragkit.generation.llm.hf import _GENERATE_LOCK

        p, sm = self.params, self.sm
        prompt = p["prompt"].format(question=question.strip())
        prompt = [{"role": "user", "content": prompt}] if p["chat"] else prompt
        ids = sm.encode_prompt(prompt)
        tok = sm.tokenizer
        common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=int(p["max_new_tokens"]),
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        texts = []
        with _GENERATE_LOCK, torch_threads(sm.threads), torch.inference_mode():
            greedy = sm.model.generate(input_ids=ids, do_sample=False, temperature=None, top_p=None, top_k=None,
                                       **common)
            texts.append(tok.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True))
            n = int(p["samples"])
            if n > 0:
                if p["seed"] is not None:
                    torch.manual_seed(int(p["seed"]))
                sampled = sm.model.generate(input_ids=ids.repeat(n, 1), do_sample=True, temperature=float(p["temperature"]),
                                            top_p=float(p["top_p"]), top_k=None, **{**common, "attention_mask":
                                                                                     torch.ones_like(ids.repeat(n, 1))})
                texts += [tok.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in sampled]
        return [clean_candidate(t) for t in texts]

    # -- filter ---------------------------------------------------------------------------------
    def select(self, question: str, candidates: list[str], hits: list | None = None) -> list[str]:
        """The candidates that go into the prompt (see the module docstring); `self.last` records
        every candidate's scores and verdict."""
        p = self.params
        self.last = []
        distinct = list(dict.fromkeys(c for c in candidates if c.strip()))
        if not p["filter"]:
            self.last = [{"text": c, "kept": i < p["max_passages"], "reason": "unfiltered"} for i, c in enumerate(distinct)]
            return distinct[: int(p["max_passages"])]
        if not distinct:
            return []
        enc = self.encoder
        cand = enc.encode(distinct)
        rel = cand @ enc.encode([question])[0]
        passages = [f"{getattr(h, 'title', '') or ''}\n{h.text}".strip() for h in (hits or [])]
        cons = (cand @ enc.encode(passages).T).max(axis=1) if passages else None
        rows = []
        for i, text in enumerate(distinct):
            row = {"text": text, "relevance": round(float(rel[i]), 4),
                   "consistency": None if cons is None else round(float(cons[i]), 4), "kept": False}
            if is_degenerate(text, int(p["min_words"])):
                row["reason"] = "degenerate"
            elif rel[i] < p["min_relevance"]:
                row["reason"] = "irrelevant"
            elif cons is not None and cons[i] < p["min_consistency"]:
                row["reason"] = "inconsistent"
            else:
                row["reason"] = None
            rows.append((i, row))
        ok = sorted((r for r in rows if r[1]["reason"] is None),
                    key=lambda r: -(float(rel[r[0]]) + (float(cons[r[0]]) if cons is not None else 0.0)))
        kept: list[int] = []
        for i, row in ok:
            if kept and float((cand[kept] @ cand[i]).max()) >= p["max_duplicate"]:
                row["reason"] = "duplicate"
            elif len(kept) >= int(p["max_passages"]):
                row["reason"] = "over max_passages"
            else:
                row["kept"] = True
                kept.append(i)
        self.last = [r for _, r in rows]
        return [distinct[i] for i in kept]

    def knowledge(self, question: str, hits: list | None = None) -> str:
        """The section's text: kept passages, one per line ("- ..."); "" when none survive."""
        kept = self.select(question, self.candidates(question), hits)
        return "\n".join(f"- {t}" for t in kept)



def make_knowledge_adapter(out: str | Path, sm: str = "default", **params: Any) -> Path:
    """Write an adapter folder of kind `knowledge` around an SM (hub id / alias / transformers or
    LoRA folder / ragkit lora|full adapter folder); `params` override the defaults (see
    DEFAULT_PARAMS). The SM is referenced, not copied: give a path that stays put."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise AdapterError(f"unknown knowledge parameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_PARAMS)}")
    out = Path(out)
    sm_path = Path(sm).resolve() if Path(sm).is_dir() else None
    # a sibling folder (e.g. adapters/NAME-sm beside adapters/NAME) is stored by name: the pair can move together
    sm_ref = sm if sm_path is None else sm_path.name if sm_path.parent == out.resolve().parent else str(sm_path)
    base = sm_ref
    if sm_path is not None and (sm_path / "manifest.json").is_file():
        base = json.loads((sm_path / "manifest.json").read_text(encoding="utf-8")).get("base_model", sm_ref)
    manifest = new_manifest(KIND, base, params={**DEFAULT_PARAMS, **params, "sm": sm_ref},
                            training={"sm": sm_ref})
    return write_adapter(out, manifest, lambda tmp: None)


def background_corpus(data_dir: str | Path, split: str = "train") -> list[dict]:
    """Training texts for a knowledge SM from a BEIR folder: for each judged question of `split`,
    `"Question: {question}\\nBackground: {passage}"` over its judged passages (the format the
    adapter prompts with). Returns JSONL-ready records `{"id", "text"}`."""
    from ragkit.data.corpus import load_beir_corpus, load_beir_judged

    judged, qrels = load_beir_judged(data_dir, split)
    docs = {d.id: d for d in load_beir_corpus(data_dir)}
    out = []
    for qid, question in judged.items():
        for did in qrels[qid]:
            if did in docs:
                out.append({"id": f"{qid}:{did}",
                            "text": DEFAULT_PROMPT.format(question=question) + " " + docs[did].text})
    return out


def split_overlap(data_dir: str | Path, train: str = "train", test: str = "test", n: int = 8) -> dict:
    """Leak check between the passages judged for two splits: shared ids, identical texts, and the
    share of each test passage's word `n`-grams that occur in the training passages."""
    from ragkit.data.corpus import load_beir_corpus, load_beir_judged

    docs = {d.id: d.text for d in load_beir_corpus(data_dir)}
    ids = {}
    for s in (train, test):
        _, qrels = load_beir_judged(data_dir, s)
        ids[s] = {d for ds in qrels.values() for d in ds if d in docs}

    def grams(t: str) -> set:
        return word_ngrams(t, n, lower=True)

    train_grams: set = set().union(*(grams(docs[d]) for d in ids[train])) if ids[train] else set()
    train_texts = {docs[d] for d in ids[train]}
    shares = sorted(len(g & train_grams) / len(g) for g in (grams(docs[d]) for d in ids[test]) if g)
    return {"train_passages": len(ids[train]), "test_passages": len(ids[test]),
            "shared_ids": len(ids[train] & ids[test]),
            "identical_texts": sum(docs[d] in train_texts for d in ids[test]),
            f"max_{n}gram_share": round(shares[-1], 4) if shares else 0.0,
            f"mean_{n}gram_share": round(sum(shares) / len(shares), 5) if shares else 0.0,
            f"test_passages_over_10pct_{n}grams": sum(s > 0.1 for s in shares)}


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
