"""llama-index components over ragkit: a retriever, an LLM and a reranking node postprocessor.

    from ragkit.integrations.llama_index import query_engine
    engine = query_engine("indexes/pydocs")          # ragkit retrieval + the packaged SmolLM2
    print(engine.query("How do I read a file line by line?"))

- `RagkitRetriever` (`BaseRetriever`): ragkit search (bm25, dense, hybrid) as `NodeWithScore`s whose
  node ids are ragkit chunk ids, with doc id, title, source and character offsets in the metadata.
- `RagkitLLM` (`CustomLLM`): any ragkit LLM backend (local transformers model, OpenAI-compatible
  endpoint), streaming included; chat messages go through the model's own chat template.
- `RagkitRerankPostprocessor` (`BaseNodePostprocessor`): reorders nodes with any ragkit reranker
  (default: MaxSim late interaction over the packaged MiniLM).
- `RagkitKnowledgePostprocessor` (`BaseNodePostprocessor`): black-box domain knowledge — a ragkit
  prompt adapter (e.g. kind `knowledge`: a small domain model's filtered background passages for the
  query, checked against the retrieved nodes) adds one extra node, first, labelled "Background
  knowledge (from a domain model; may be wrong)" with `metadata["ragkit_knowledge"] = True`.

Everything runs offline: the LLM is always passed explicitly (llama-index's global default is
OpenAI), and llama-index counts prompt tokens with the tiktoken encoding it ships.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

try:
    from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseGen, CompletionResponse,
                                                  CompletionResponseGen, LLMMetadata, MessageRole)
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("ragkit's llama-index components need llama-index-core: pip install 'ragkit[llamaindex]'") from e

from ragkit.retrieval.index import Hit, Index
from ragkit.generation.llm.base import LLM, GenerationConfig

_HIDDEN_FROM_LLM = ["doc_id", "chunk_id", "start", "end", "rank", "retriever", "score"]


def hit_to_node(hit: Hit, retriever: str | None = None) -> NodeWithScore:
    meta = {"doc_id": hit.doc_id, "chunk_id": hit.chunk_id, "title": hit.title, "source": hit.source,
            "start": hit.start, "end": hit.end, "rank": hit.rank, "retriever": retriever or "",
            **{k: v for k, v in hit.metadata.items() if isinstance(v, (str, int, float, bool))}}
    node = TextNode(id_=hit.chunk_id, text=hit.text, metadata=meta, excluded_llm_metadata_keys=_HIDDEN_FROM_LLM,
                    excluded_embed_metadata_keys=_HIDDEN_FROM_LLM)
    return NodeWithScore(node=node, score=hit.score)


def node_to_hit(n: NodeWithScore, rank: int) -> Hit:
    meta = n.node.metadata or {}
    text = n.node.get_content()
    return Hit(rank, float(n.score or 0.0), meta.get("chunk_id", n.node.node_id), meta.get("doc_id", n.node.node_id),
               meta.get("title", ""), text, meta.get("source", ""), int(meta.get("start", 0)),
               int(meta.get("end", len(text))))


class RagkitRetriever(BaseRetriever):
    """ragkit search as a llama-index retriever."""

    def __init__(self, index: Index | str | Path, k: int = 5, retriever: str | None = None, **kwargs: Any) -> None:
        self.index = index if isinstance(index, Index) else Index.load(index)
        if retriever:
            self.index.check_retriever(retriever)
        self.k, self.retriever = k, retriever
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        name = self.retriever or self.index.default_retriever
        return [hit_to_node(h, name) for h in self.index.search(query_bundle.query_str, k=self.k, retriever=name)]


class RagkitLLM(CustomLLM):
    """A ragkit LLM backend (default: the packaged SmolLM2-135M-Instruct) as a llama-index LLM."""

    max_new_tokens: int = Field(default=256, description="Longest completion, in tokens.")
    temperature: float = Field(default=0.0, description="0 is greedy.")
    _backend: Any = PrivateAttr()

    def __init__(self, backend: LLM | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if backend is None:
            from ragkit.generation.llm.hf import HFCausalLM

            backend = HFCausalLM.from_pretrained()
        self._backend = backend

    @property
    def backend(self) -> LLM:
        return self._backend

    @classmethod
    def class_name(cls) -> str:
        return "RagkitLLM"

    @property
    def metadata(self) -> LLMMetadata:
        b = self._backend
        return LLMMetadata(context_window=b.context_window, num_output=self.max_new_tokens, model_name=b.model_id,
                           is_chat_model=bool(getattr(b, "is_chat", False)))

    def _config(self, kwargs: dict) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=int(kwargs.get("max_tokens", self.max_new_tokens)),
                                temperature=float(kwargs.get("temperature", self.temperature)))

    @staticmethod
    def _messages(messages: Sequence[ChatMessage]) -> list[dict]:
        role = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant"}
        return [{"role": role.get(m.role, "user"), "content": m.content or ""} for m in messages]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """A completion of `prompt`; chat models get it as one user message (their template applies)."""
        prompt_or_chat = [{"role": "user", "content": prompt}] if self.metadata.is_chat_model else prompt
        return CompletionResponse(text=self._backend.generate(prompt_or_chat, self._config(kwargs)).text)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        prompt_or_chat = [{"role": "user", "content": prompt}] if self.metadata.is_chat_model else prompt
        text = ""
        for piece in self._backend.stream(prompt_or_chat, self._config(kwargs)):
            text += piece
            yield CompletionResponse(text=text, delta=piece)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = self._backend.generate(self._messages(messages), self._config(kwargs)).text
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        def gen() -> ChatResponseGen:
            text = ""
            for piece in self._backend.stream(self._messages(messages), self._config(kwargs)):
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        return gen()


class RagkitRerankPostprocessor(BaseNodePostprocessor):
    """Reorders nodes with a ragkit reranker (anything with `rerank(query, hits, k)`); keeps `top_n`."""

    top_n: Optional[int] = Field(default=None, description="Nodes kept after reranking (None: all).")
    _reranker: Any = PrivateAttr()

    def __init__(self, reranker: Any = None, top_n: int | None = None, **kwargs: Any) -> None:
        super().__init__(top_n=top_n, **kwargs)
        if reranker is None:
            from ragkit.retrieval.rerank import MaxSimReranker

            reranker = MaxSimReranker()
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "RagkitRerankPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("reranking needs the query")
        if not nodes:
            return []
        by_id = {n.node.node_id: n for n in nodes}
        hits = [node_to_hit(n, r) for r, n in enumerate(nodes, start=1)]
        ids = {h.chunk_id: n.node.node_id for h, n in zip(hits, nodes)}
        out = []
        for h in self._reranker.rerank(query_bundle.query_str, hits, self.top_n):
            original = by_id[ids[h.chunk_id]]
            out.append(NodeWithScore(node=original.node, score=h.score))
        return out


class RagkitKnowledgePostprocessor(BaseNodePostprocessor):
    """Adds a ragkit prompt adapter's background knowledge for the query as one extra node, first
    (nothing when the adapter's filter keeps no passage). `adapter`: a loaded PromptAdapter or an
    adapter name / folder (`ragkit.adaptation.load_adapter`)."""

    score: float = Field(default=1.0, description="Score given to the knowledge node.")
    _adapter: Any = PrivateAttr()

    def __init__(self, adapter: Any, score: float = 1.0, **kwargs: Any) -> None:
        super().__init__(score=score, **kwargs)
        if isinstance(adapter, (str, Path)):
            from ragkit.adaptation import load_adapter

            adapter = load_adapter(adapter)
        from ragkit.adaptation import PromptAdapter

        if not isinstance(adapter, PromptAdapter):
            raise ValueError(f"{adapter!r} is not a black-box (prompt) adapter; white-box adapters attach to the LLM: "
                             "llm.logits_adapters")
        self._adapter = adapter

    @classmethod
    def class_name(cls) -> str:
        return "RagkitKnowledgePostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("knowledge injection needs the query")
        from ragkit.config import KNOWLEDGE_HEADER

        hits = [node_to_hit(n, r) for r, n in enumerate(nodes, start=1)]
        text = self._adapter.knowledge(query_bundle.query_str, hits)
        if not text or not text.strip():
            return list(nodes)
        node = TextNode(text=f"{KNOWLEDGE_HEADER}\n{text.strip()}",
                        metadata={"ragkit_knowledge": True, "adapter": self._adapter.name, "title": "background knowledge"},
                        excluded_llm_metadata_keys=["ragkit_knowledge", "adapter", "title"],
                        excluded_embed_metadata_keys=["ragkit_knowledge", "adapter", "title"])
        return [NodeWithScore(node=node, score=self.score), *nodes]


def query_engine(index: Index | str | Path, llm: LLM | RagkitLLM | None = None, k: int = 5,
                 retriever: str | None = None, reranker: Any = None, rerank_candidates: int = 20,
                 streaming: bool = False, max_new_tokens: int = 256, knowledge: Any = None,
                 **kwargs: Any) -> RetrieverQueryEngine:
    """A llama-index query engine: ragkit retrieval (optionally reranked) answered by a ragkit LLM.
    With a reranker, `rerank_candidates` hits are retrieved and the best `k` kept. `knowledge`: a
    prompt adapter (or its name / folder) whose background knowledge is added as an extra node."""
    if not isinstance(llm, RagkitLLM):
        llm = RagkitLLM(llm, max_new_tokens=max_new_tokens)
    post = [RagkitRerankPostprocessor(reranker, top_n=k)] if reranker is not None else []
    if knowledge is not None:
        post.append(RagkitKnowledgePostprocessor(knowledge))
    # only a reranker needs the wider candidate set (it keeps the best k); knowledge adds one node
    base = RagkitRetriever(index, k=max(k, rerank_candidates) if reranker is not None else k, retriever=retriever)
    return RetrieverQueryEngine.from_args(base, llm=llm, node_postprocessors=post, streaming=streaming, **kwargs)
