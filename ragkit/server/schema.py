"""Request bodies of `ragkit serve` (OpenAI's shapes; unknown fields are ignored, as OpenAI's own
server does, except inside ragkit's `ragkit` extension field)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RagkitOptions(BaseModel):
    """The `ragkit` extension field of a request."""

    model_config = ConfigDict(extra="forbid")
    retrieval: Optional[bool] = None
    k: Optional[int] = Field(None, ge=1, le=100)
    retriever: Optional[str] = None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class Sampling(BaseModel):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    ragkit: Optional[RagkitOptions] = None


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]


class EmbeddingRequest(BaseModel):
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"


class RetrieveRequest(BaseModel):
    query: str = Field(..., min_length=1)
    k: int = Field(10, ge=1, le=100)
    retriever: Optional[str] = None

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the query is blank")
        return v
