"""Small-to-large cascades (ragkit.generation.cascade) with the real packaged SmolLM2."""
from dataclasses import replace

import pytest

from ragkit import Index
from ragkit.config import PipelineConfig
from ragkit.errors import RagkitError
from ragkit.generation.cascade import Cascade
from ragkit.generation.llm import GenerationConfig
from ragkit.generation.pipeline import Pipeline

SHORT = GenerationConfig(max_new_tokens=24)
QUESTION = "What does the assert statement do?"


@pytest.fixture(scope="module")
def index(encoder, topic_docs):
    return Index.build([replace(d, text=d.text[:1500]) for d in topic_docs[:20]], encoder=encoder)


@pytest.mark.slow
def test_the_signal_ranks_the_models_own_answer_above_a_scrambled_one(llm):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    own = llm.generate(messages, SHORT).text
    scrambled = " ".join(reversed(own.split()))
    cascade = Cascade(large=llm)
    c_own, c_scrambled = cascade.confidence(llm, messages, own), cascade.confidence(llm, messages, scrambled)
    assert 0 < c_scrambled < c_own <= 1 and c_own > 0.3


@pytest.mark.slow
def test_the_answer_says_which_model_answered_and_why(index, llm):
    plain = Pipeline(index, llm, PipelineConfig(generation=SHORT)).ask(QUESTION)
    assert plain.model == llm.model_id and plain.cascade == {}
    never = Pipeline(index, llm, PipelineConfig(generation=SHORT), cascade=Cascade(llm, min_confidence=0.0)).ask(QUESTION)
    assert never.text == plain.text and never.cascade["escalated"] is False
    assert "reaches 0.0" in never.cascade["reason"] and 0 < never.cascade["confidence"] <= 1
    # always escalate: the larger model (here the same SmolLM2) answers the same prompt again, streamed
    stream = Pipeline(index, llm, PipelineConfig(generation=SHORT), cascade=Cascade(llm, min_confidence=1.0)).stream(QUESTION)
    streamed = "".join(stream)
    always = stream.answer
    assert always.cascade["escalated"] is True and "below 1.0" in always.cascade["reason"]
    assert always.text == streamed == plain.text and always.model == llm.model_id
    assert always.to_dict()["cascade"]["large_model"] == llm.model_id


def test_a_cascade_needs_a_local_llm_and_a_probability_threshold():
    config = PipelineConfig()
    assert Cascade.from_config(config) is None  # off by default
    config.cascade.model, config.llm.backend = "qwen2.5-coder-1.5b", "openai"
    with pytest.raises(RagkitError, match="needs a local LLM"):
        Cascade.from_config(config)
    config.llm.backend, config.cascade.min_confidence = "hf", 1.5
    with pytest.raises(RagkitError, match="between 0 and 1"):
        Cascade.from_config(config)
    with pytest.raises(Exception, match="cascade: unknown field"):
        PipelineConfig.from_dict({"cascade": {"threshold": 0.5}})
