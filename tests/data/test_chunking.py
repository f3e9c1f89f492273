import pytest

from ragkit.data.chunking import Chunker, ChunkingConfig
from ragkit.data.corpus import Document


@pytest.fixture(scope="module")
def chunker(encoder):
    return Chunker(encoder.tokenizer, ChunkingConfig(chunk_tokens=64, overlap=8))


def n_tokens(chunker, text):
    return len(chunker.backend.encode(text, add_special_tokens=False).ids)


def test_long_document_windows_with_overlap_and_offsets(chunker, topic_docs):
    doc = max(topic_docs, key=lambda d: len(d.text))
    chunks = chunker.chunk([doc])
    assert len(chunks) > 3
    budget = 64 - 2 - n_tokens(chunker, doc.title)
    for n, c in enumerate(chunks):
        assert c.id == f"{doc.id}#{n}" and c.doc_id == doc.id and c.n == n
        assert doc.text[c.start:c.end] == c.text  # offsets cite the source exactly
        assert n_tokens(chunker, c.text) <= budget + 1  # re-tokenising a cut span may merge one piece
        assert c.title == doc.title and c.source == doc.source
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # consecutive chunks overlap
    assert doc.text[:chunks[0].start].strip() == "" and doc.text[chunks[-1].end:].strip() == ""  # nothing lost


def test_model_tokenizer_truncation_is_not_inherited(encoder):
    # the MiniLM tokenizer.json truncates at 128 tokens; chunking must still see whole documents
    text = "word " * 1000
    chunks = Chunker(encoder.tokenizer, ChunkingConfig(256, 32)).chunk([Document("d", text)])
    assert len(chunks) >= 4 and chunks[-1].end >= len(text.rstrip()) - 5


def test_short_document_is_one_chunk_and_ids_are_stable(chunker):
    doc = Document("x", "A short text.", "Title")
    first, again = chunker.chunk([doc]), chunker.chunk([doc])
    assert [c.to_dict() for c in first] == [c.to_dict() for c in again]
    assert len(first) == 1 and first[0].id == "x#0" and first[0].indexed_text == "Title A short text."


def test_invalid_config():
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(chunk_tokens=64, overlap=40)
    with pytest.raises(ValueError, match="chunk_tokens"):
        ChunkingConfig(chunk_tokens=4)
