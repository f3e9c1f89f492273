"""`ragkit.Pipeline`: retrieve → pack numbered sources within the context budget → generate → an
answer whose `[n]` citations map to the sources (doc id, title, source path, chunk offsets).

Domain adapters (`ragkit.adaptation`) attach to a pipeline and stack: white-box `LogitsAdapter`s go
onto the local LLM's `logits_adapters` (a transformers LogitsProcessor each, applied in order on
every generation); black-box `PromptAdapter`s write a knowledge section that `pack` puts before
the sources, within the context budget, and that `Answer.knowledge` reports."""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

from ragkit.config import PipelineConfig
from ragkit.generation.cascade import Cascade
from ragkit.generation.loader import load_llm
from ragkit.errors import PromptTooLongError, RagkitError
from ragkit.retrieval.index import Hit, Index
from ragkit.generation.llm.base import LLM, GenerationConfig, Message

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Source:
    """A numbered source as the model saw it (text may be cut at a token boundary to fit)."""

    n: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    start: int
    end: int
    text: str
    score: float
    truncated: bool = False


@dataclass
class Packed:
    """A prompt ready for the LLM: messages, the numbered sources, dropped chunk ids, and the
    knowledge section's text as packed (possibly cut; "" when none)."""

    messages: list[Message]
    sources: list[Source]
    dropped: list[str]
    knowledge: str = ""


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Source]                       # what the prompt held, numbered from 1
    citations: list[int]                         # the [n] the model wrote, in order of first use
    dropped: list[str] = field(default_factory=list)   # chunk ids left out for the context budget
    unknown_citations: list[int] = field(default_factory=list)
    attributions: list[dict] = field(default_factory=list)  # {sentence, n, similarity}: ragkit-attributed, not model-written
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    knowledge: str = ""                          # the knowledge section the prompt held (prompt adapters)
    adapters: list[str] = field(default_factory=list)  # names of the adapters attached to the pipeline
    model: str = ""                              # the LLM that wrote the answer
    cascade: dict = field(default_factory=dict)  # with a cascade: the small model's confidence and whether it escalated

    @property
    def attributed(self) -> list[int]:
        """Source numbers ragkit appended for sentences the model left without a marker."""
        return [n for n in dict.fromkeys(a["n"] for a in self.attributions) if n not in self.citations]

    @property
    def cited_sources(self) -> list[Source]:
        """The model's own citations, then ragkit's attributions."""
        by_n = {s.n: s for s in self.sources}
        return [by_n[n] for n in self.citations + self.attributed]

    def to_dict(self, text: bool = True) -> dict:
        """The answer as JSON-ready data — the one serialisation `ragkit ask --json`, the server's
        `ragkit` field and evaluation share. Each source says whether it was `cited` (by the model or
        by ragkit's attribution); `attributed` lists the numbers ragkit added, `attributions` why.
        `text=False` leaves the answer text out (the server sends it in the message)."""
        d = asdict(self)
        cited = set(self.citations + self.attributed)
        for source in d["sources"]:
            source["cited"] = source["n"] in cited
        d["attributed"] = self.attributed
        if not text:
            del d["text"]
        return d


def parse_citations(text: str, n_sources: int) -> tuple[list[int], list[int]]:
    """[n], [n, m] and [n][m] markers → (valid numbers in order of first use, out-of-range numbers)."""
    valid, unknown = [], []
    for group in CITATION.findall(text):
        for n in (int(x) for x in group.split(",")):
            target = valid if 1 <= n <= n_sources else unknown
            if n not in target:
                target.append(n)
    return valid, unknown


SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")


def attribute(encoder, text: str, sources: list[Source], min_similarity: float) -> list[dict]:
    """Answer sentences that carry no [n] marker, each matched to its most similar source
    (cosine of `encoder` embeddings) when that similarity reaches `min_similarity`."""
    sentences = [s.strip() for s in SENTENCE_END.split(text)]
    sentences = [s for s in sentences if len(s) > 12 and not CITATION.search(s)]
    if not sentences or not sources or encoder is None:
        return []
    sims = encoder.encode(sentences) @ encoder.encode([f"{s.title}\n{s.text}" for s in sources]).T
    out = []
    for sentence, row in zip(sentences, sims):
        best = int(row.argmax())
        if float(row[best]) >= min_similarity:
            out.append({"sentence": sentence, "n": sources[best].n, "similarity": round(float(row[best]), 4)})
    return out


def load_reranker(name: str | None, index: Index | None = None):
    """None, or a reranker: "maxsim" (late interaction over the packaged MiniLM's token embeddings),
    "maxsim:MODEL" (any sentence-transformers model, hub id or local folder), "colbert" (the index's
    ColBERT checkpoint and stored token vectors, else the untrained MiniLM ColBERT) or
    "colbert:CHECKPOINT" (a ColBERT checkpoint folder)."""
    if not name:
        return None
    kind, _, model = name.partition(":")
    if kind == "maxsim":
        from ragkit.retrieval.rerank import MaxSimReranker

        return MaxSimReranker(model or "default")
    if kind == "colbert":
        from ragkit.retrieval.rerank import ColBERTReranker

        return ColBERTReranker(model or "default", index=index)
    raise RagkitError(f"unknown retrieval.rerank {name!r}; choose maxsim, maxsim:MODEL, colbert or colbert:CHECKPOINT")


def load_adapters(config: PipelineConfig) -> list:
    """The adapters a configuration lists, loaded in order (`ragkit.adaptation.load_adapter`)."""
    from ragkit.adaptation import load_adapter

    return [load_adapter(name, **overrides) for name, overrides in config.adapter_specs()]


def attach_adapters(llm: LLM, adapters: list) -> None:
    """Put the white-box adapters onto `llm.logits_adapters`; a backend without local logits (a
    remote endpoint) fails with a message naming the adapter. Prompt adapters need nothing here."""
    from ragkit.adaptation import AdapterError, LogitsAdapter, PromptAdapter

    for a in adapters:
        if isinstance(a, LogitsAdapter):
            if not isinstance(getattr(llm, "logits_adapters", None), list):
                raise AdapterError(
                    f"adapter {a.name!r} (kind {a.kind}) adjusts the LLM's logits at decode time and needs a local "
                    f"transformers model (llm.backend: hf); {getattr(llm, 'model_id', '') or type(llm).__name__} is "
                    f"a {type(llm).__name__} without local logits. Black-box adapters (kind knowledge) work with "
                    "any backend.")
            if a not in llm.logits_adapters:
                llm.logits_adapters.append(a)
        elif not isinstance(a, PromptAdapter):
            raise AdapterError(f"{a!r} is neither a PromptAdapter nor a LogitsAdapter")


class Pipeline:
    """Retrieval-augmented generation over a ragkit index with any LLM backend."""

    def __init__(self, index: Index | None, llm: LLM, config: PipelineConfig | None = None, reranker=None,
                 adapters: list | None = None, cascade=None) -> None:
        self.index, self.llm = index, llm
        self.config = config or PipelineConfig()
        self.reranker = reranker  # anything with rerank(query, hits, k): see ragkit.retrieval.rerank
        self.cascade = cascade  # a ragkit.generation.cascade.Cascade: escalate unsure answers to a larger LLM
        self.adapters: list = []
        self.add_adapters(adapters or [])

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Pipeline":
        index = Index.load(config.index) if config.index else None
        llm = load_llm(config.llm)
        return cls(index, llm, config, load_reranker(config.retrieval.rerank, index), load_adapters(config),
                   Cascade.from_config(config))

    # -- adapters -------------------------------------------------------------------------------
    def add_adapters(self, adapters: list) -> None:
        """Attach adapters (loaded `ragkit.adaptation.Adapter`s), after the ones already attached."""
        attach_adapters(self.llm, adapters)
        self.adapters += list(adapters)

    @property
    def prompt_adapters(self) -> list:
        from ragkit.adaptation import PromptAdapter

        return [a for a in self.adapters if isinstance(a, PromptAdapter)]

    def knowledge(self, question: str, hits: list[Hit] | None = None) -> str:
        """The prompt adapters' background text for `question` (given the retrieved `hits`), one
        adapter's text after another; "" when there are none or they have nothing."""
        texts = [a.knowledge(question, hits) for a in self.prompt_adapters]
        return "\n".join(t.strip() for t in texts if t and t.strip())

    # -- steps ----------------------------------------------------------------------------------
    def retrieve(self, question: str, k: int | None = None, retriever: str | None = None) -> list[Hit]:
        """The top `k` hits (config's k by default); with a reranker, it reorders a wider candidate set."""
        if self.index is None:
            return []
        r = self.config.retrieval
        k = k or r.k
        if self.reranker is None:
            return self.index.search(question, k=k, retriever=retriever or r.retriever)
        candidates = self.index.search(question, k=max(k, r.rerank_candidates), retriever=retriever or r.retriever)
        return self.reranker.rerank(question, candidates, k)

    def _messages(self, question: str, sources_text: str, history: list[Message] | None = None,
                  system: str | None = None, knowledge: str = "") -> list[Message]:
        p = self.config.prompt
        system = p.system if not system else f"{p.system}\n\n{system}"
        section = f"{p.knowledge_header}\n{knowledge}" if knowledge else ""
        if "{knowledge}" in p.template:
            user = p.template.format(sources=sources_text, question=question, knowledge=section)
        else:
            user = p.template.format(sources=sources_text, question=question)
            user = f"{section}\n\n{user}" if section else user
        return [{"role": "system", "content": system}, *(history or []), {"role": "user", "content": user}]

    def _fit(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that is at most `max_tokens` tokens, cut between tokens."""
        tok = getattr(self.llm, "tokenizer", None)
        if tok is None:  # remote model without a local tokenizer: estimate by characters
            return text[: max(0, max_tokens * 3)]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]] if max_tokens > 0 else ""

    def pack(self, question: str, hits: list[Hit], gen: GenerationConfig | None = None,
             history: list[Message] | None = None, system: str | None = None, knowledge: str | None = None
             ) -> tuple[list[Message], list[Source], list[str]]:
        """Number the hits as sources, in rank order, within the context budget: (messages, sources,
        dropped chunk ids). `prepare` does the same and also reports the knowledge section."""
        p = self.prepare(question, hits, gen, history, system, knowledge)
        return p.messages, p.sources, p.dropped

    def prepare(self, question: str, hits: list[Hit], gen: GenerationConfig | None = None,
                history: list[Message] | None = None, system: str | None = None,
                knowledge: str | None = None) -> Packed:
        """Number the hits as sources, in rank order, within the context budget.

        Budget = context window − max new tokens − the prompt without sources. A source that does
        not fit whole is cut at a token boundary, or dropped when fewer than `min_source_tokens`
        would remain; dropped chunk ids are returned. `history` (earlier chat turns) counts against
        the budget: its oldest turns are left out first when it does not fit. `system` is added to
        the configured system prompt. `knowledge` is the prompt adapters' text (None: asked of them
        here, "": no section); its section comes before the sources and takes at most
        `prompt.knowledge_max_tokens` (and half the budget left after the question), cut at a token
        boundary.
        """
        gen = gen or self.config.generation
        p = self.config.prompt
        count = self.llm.count_tokens
        history = list(history or [])
        if knowledge is None:
            knowledge = self.knowledge(question, hits)
        overhead = count(self._render(self._messages(question, "", history, system))) + 8  # template tokens, separators
        while history and self.llm.context_window - gen.max_new_tokens - overhead < p.min_source_tokens * 4:
            history = history[2:]  # forget the oldest question/answer pair
            overhead = count(self._render(self._messages(question, "", history, system))) + 8
        budget = self.llm.context_window - gen.max_new_tokens - overhead
        if budget < 0:
            raise PromptTooLongError(
                f"the question is too long: the prompt needs {overhead} tokens plus {gen.max_new_tokens} to answer, "
                f"but {self.llm.model_id} has a context of {self.llm.context_window} tokens")
        if knowledge:
            room = min(p.knowledge_max_tokens, budget // 2) - count(p.knowledge_header) - 4
            knowledge = self._fit(knowledge, room).rstrip() if room > 0 else ""
            if knowledge:
                with_section = count(self._render(self._messages(question, "", history, system, knowledge))) + 8
                budget -= with_section - overhead
        sources, dropped, blocks = [], [], []
        for hit in hits:
            n = len(sources) + 1
            header = p.source_template.format(n=n, title=hit.title or hit.doc_id, source=hit.source, text="")
            room = budget - count(header) - 2
            text, truncated = hit.text, False
            if count(text) > room:
                if room < p.min_source_tokens:
                    dropped.append(hit.chunk_id)
                    continue
                text, truncated = self._fit(hit.text, room), True
            block = p.source_template.format(n=n, title=hit.title or hit.doc_id, source=hit.source, text=text)
            budget -= count(block) + 2
            blocks.append(block)
            sources.append(Source(n, hit.chunk_id, hit.doc_id, hit.title, hit.source, hit.start,
                                  hit.start + len(text), text, hit.score, truncated))
        return Packed(self._messages(question, "\n\n".join(blocks), history, system, knowledge), sources, dropped,
                      knowledge)

    def _render(self, messages: list[Message]) -> str:
        render = getattr(self.llm, "render", None)
        return render(messages) if render else "\n\n".join(m["content"] for m in messages)

    # -- answering ------------------------------------------------------------------------------
    def ask(self, question: str, gen: GenerationConfig | None = None, history: list[Message] | None = None,
            **options) -> Answer:
        """The whole answer; `options` as for `stream` (k, retriever, system)."""
        stream = self.stream(question, gen, history, **options)
        for _ in stream:
            pass
        return stream.answer

    def stream(self, question: str, gen: GenerationConfig | None = None, history: list[Message] | None = None,
               k: int | None = None, retriever: str | None = None, system: str | None = None) -> "AnswerStream":
        """Iterate text pieces as they are generated; `.answer` holds the Answer afterwards.
        `history` holds earlier turns as chat messages (user questions, assistant answers); `k` and
        `retriever` override the configured retrieval for this question; `system` is added to the
        configured system prompt."""
        return AnswerStream(self, question, gen or self.config.generation, history, k, retriever, system)


class AnswerStream:
    """Iterator over answer text pieces; the complete `Answer` is in `.answer` once exhausted."""

    def __init__(self, pipeline: Pipeline, question: str, gen: GenerationConfig,
                 history: list[Message] | None = None, k: int | None = None, retriever: str | None = None,
                 system: str | None = None) -> None:
        if not question or not question.strip():
            raise ValueError("the question is empty")
        self.pipeline, self.question, self.gen = pipeline, question, gen
        t0 = time.perf_counter()
        self.hits = pipeline.retrieve(question, k, retriever)
        t1 = time.perf_counter()
        knowledge = pipeline.knowledge(question, self.hits)
        t2 = time.perf_counter()
        packed = pipeline.prepare(question, self.hits, gen, history, system, knowledge)
        self.messages, self.sources, self.dropped, self.knowledge = (packed.messages, packed.sources, packed.dropped,
                                                                     packed.knowledge)
        self.timings = {"retrieve_s": t1 - t0, "pack_s": time.perf_counter() - t2}
        if pipeline.prompt_adapters:
            self.timings["knowledge_s"] = t2 - t1
        self.answer: Answer | None = None
        # the backend's stream: made now, so a prompt that does not fit fails before any output
        self.text_stream = pipeline.llm.stream(self.messages, gen)

    @property
    def finish_reason(self) -> str | None:
        """The backend's finish reason once the answer is complete ("stop", "length", "cancelled")."""
        return getattr(self.text_stream, "finish_reason", None)

    def cancel(self) -> None:
        """Stop generating (from any thread; never blocks)."""
        cancel = getattr(self.text_stream, "cancel", None)
        if cancel is not None:
            cancel()

    def _pieces(self) -> Iterator[str]:
        """The LLM's text stream; with a cascade, the small model's whole answer first (not shown),
        then either that answer at once or the larger model's streamed answer."""
        cascade = self.pipeline.cascade
        if cascade is None:
            yield from self.text_stream
            return
        text = "".join(self.text_stream)
        self.cascade_decision = cascade.decide(self.pipeline.llm, self.messages, text)
        if not self.cascade_decision["escalated"] or getattr(self.text_stream, "finish_reason", None) == "cancelled":
            yield text
            return
        self.answered_by = cascade.large
        self.text_stream = cascade.large.stream(self.messages, self.gen)
        yield from self.text_stream

    def __iter__(self) -> Iterator[str]:
        llm, pieces = self.pipeline.llm, []
        self.answered_by, self.cascade_decision = llm, {}
        t0 = time.perf_counter()
        first = None
        for piece in self._pieces():
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(piece)
            yield piece
        text = model_text = "".join(pieces)
        citations, unknown = parse_citations(text, len(self.sources))
        attributions, threshold = [], self.pipeline.config.prompt.attribute_min_similarity
        index = self.pipeline.index
        if threshold > 0 and self.sources and index is not None and index.encoder is not None:
            attributions = attribute(index.encoder, text, self.sources, threshold)
            added = [n for n in dict.fromkeys(a["n"] for a in attributions) if n not in citations]
            if added:  # appended, so the streamed text and the answer's text stay the same
                piece = "\n" + "".join(f"[{n}]" for n in added)
                pieces.append(piece)
                yield piece
                text += piece
        prompt = self.pipeline._render(self.messages)
        self.timings.update(generate_s=time.perf_counter() - t0, first_token_s=first or 0.0)
        self.answer = Answer(self.question, text, self.sources, citations, self.dropped, unknown, attributions,
                             llm.count_tokens(prompt),
                             getattr(self.text_stream, "completion_tokens", 0)
                             or (llm.count_tokens(model_text) if model_text else 0),
                             self.timings, self.knowledge, [a.name for a in self.pipeline.adapters],
                             getattr(self.answered_by, "model_id", ""), self.cascade_decision)
