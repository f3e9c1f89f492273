"""llama-index components over ragkit, with the packaged MiniLM and SmolLM2 (short greedy answers)."""
from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.schema import QueryBundle  # noqa: E402

from ragkit import Index  # noqa: E402
from ragkit.integrations.llama_index import (RagkitLLM, RagkitRerankPostprocessor, RagkitRetriever,  # noqa: E402
                                             query_engine)
from ragkit.generation.llm import GenerationConfig  # noqa: E402


@pytest.fixture(scope="module")
def index(encoder, topic_docs):
    return Index.build([replace(d, text=d.text[:2000]) for d in topic_docs[:40]], encoder=encoder)


@pytest.fixture(scope="module")
def backend(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def llm(backend):
    return RagkitLLM(backend, max_new_tokens=12)


def test_retriever_returns_ragkit_hits_as_nodes(index):
    nodes = RagkitRetriever(index, k=4, retriever="bm25").retrieve("the assert statement")
    hits = index.search("the assert statement", k=4, retriever="bm25")
    assert [n.node.node_id for n in nodes] == [h.chunk_id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    m = nodes[0].node.metadata
    assert m["doc_id"] == "topic:assert" and m["retriever"] == "bm25"
    assert index.chunks[nodes[0].node.node_id].text[: 50] == nodes[0].node.get_content()[:50]
    # ids and offsets are for ragkit, not for the LLM's prompt
    assert "chunk_id" not in nodes[0].node.get_content(metadata_mode="llm")
    with pytest.raises(ValueError, match="unknown retriever 'colbertx'"):
        RagkitRetriever(index, retriever="colbertx")


@pytest.mark.slow
def test_llm_completes_streams_and_chats_like_the_backend(llm, backend):
    cfg = GenerationConfig(max_new_tokens=12)
    prompt = "The capital of France is"
    expected = backend.generate([{"role": "user", "content": prompt}], cfg).text
    assert llm.complete(prompt).text == expected
    pieces = [r.delta for r in llm.stream_complete(prompt)]
    assert len(pieces) > 1 and "".join(pieces) == expected
    msgs = [ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
            ChatMessage(role=MessageRole.USER, content=prompt)]
    chat = llm.chat(msgs)
    assert chat.message.role == MessageRole.ASSISTANT
    assert chat.message.content == backend.generate([{"role": "system", "content": "Answer briefly."},
                                                     {"role": "user", "content": prompt}], cfg).text
    assert "".join(r.delta for r in llm.stream_chat(msgs)) == chat.message.content
    assert llm.metadata.model_name == backend.model_id and llm.metadata.context_window == backend.context_window


def test_rerank_postprocessor_reorders_by_the_ragkit_reranker(index):
    from ragkit.retrieval.rerank import MaxSimReranker

    reranker = MaxSimReranker()
    query = "raise an exception when a condition is false"
    nodes = RagkitRetriever(index, k=10, retriever="bm25").retrieve(query)
    out = RagkitRerankPostprocessor(reranker, top_n=3).postprocess_nodes(nodes, QueryBundle(query))
    expected = reranker.rerank(query, index.search(query, k=10, retriever="bm25"), 3)
    assert [n.node.node_id for n in out] == [h.chunk_id for h in expected]
    assert [n.score for n in out] == pytest.approx([h.score for h in expected])
    with pytest.raises(ValueError, match="needs the query"):
        RagkitRerankPostprocessor(reranker).postprocess_nodes(nodes)


@pytest.mark.slow
def test_query_engine_answers_end_to_end_with_sources(index, llm):
    engine = query_engine(index, llm=llm, k=3)
    response = engine.query("What does the assert statement do?")
    assert response.response.strip()
    assert len(response.source_nodes) == 3
    assert any(n.node.metadata["doc_id"] == "topic:assert" for n in response.source_nodes)
    streaming = query_engine(index, llm=llm, k=3, streaming=True).query("What does the assert statement do?")
    assert "".join(streaming.response_gen).strip() == response.response.strip()


def test_query_engine_with_knowledge_but_no_reranker_keeps_k_nodes(index, llm):
    """Knowledge adds one node; without a reranker nothing widens retrieval beyond k."""
    from ragkit.adaptation import PromptAdapter

    class StaticKnowledge(PromptAdapter):
        kind = "static"

        def knowledge(self, question, hits=None):
            return "- assert raises AssertionError when its expression is false"

    engine = query_engine(index, llm=llm, k=2, knowledge=StaticKnowledge())
    assert engine.retriever.k == 2
    nodes = engine.retrieve(QueryBundle("What does the assert statement do?"))
    assert len(nodes) == 3 and nodes[0].node.metadata.get("ragkit_knowledge")
