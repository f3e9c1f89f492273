"""OpenAI-compatible HTTP endpoints (vLLM, llama.cpp server, Ollama, ragkit's own server).

Plain stdlib HTTP: `POST {base_url}/chat/completions`, JSON or server-sent events when streaming.
The API key comes from the environment (`api_key_env`, default OPENAI_API_KEY). Connection
failures, timeouts, 429 and 5xx answers are retried with exponential back-off; everything else
fails at once with the endpoint's own error message.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Iterator

from ragkit.errors import BackendError
from ragkit.generation.llm.base import LLM, Generation, GenerationConfig, Prompt, TextStream, cut_at_stop

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAICompatLLM(LLM):
    """A chat model behind an OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.5, context_window: int = 8192, tokenizer=None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.context_window = context_window
        self.tokenizer = tokenizer  # a local tokenizer for exact counts; else an estimate

    def count_tokens(self, text: str) -> int:
        """Exact with a local tokenizer; otherwise a conservative estimate (one token per 3 characters)."""
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return max(1, -(-len(text) // 3))

    def _body(self, prompt: Prompt, config: GenerationConfig, stream: bool) -> dict:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        body = {"model": self.model_id, "messages": messages, "max_tokens": config.max_new_tokens,
                "temperature": config.temperature, "top_p": config.top_p, "stream": stream}
        if config.stop:
            body["stop"] = config.stop
        if config.seed is not None:
            body["seed"] = config.seed
        return body

    def _open(self, body: dict):
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=self.timeout)
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                try:
                    detail = json.loads(detail)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    pass
                last = BackendError(f"{url} answered HTTP {e.code}: {detail}")
                if e.code not in RETRY_STATUS:
                    raise last from e
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = BackendError(f"cannot reach {url}: {reason}")
        raise BackendError(f"{last} (after {self.retries + 1} attempts)")

    def generate(self, prompt: Prompt, config: GenerationConfig | None = None) -> Generation:
        config = config or GenerationConfig()
        with self._open(self._body(prompt, config, stream=False)) as resp:
            try:
                data = json.loads(resp.read())
                choice = data["choices"][0]
                text = choice["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise BackendError(f"{self.base_url} sent an answer that is not an OpenAI chat completion: {e}") from e
        usage = data.get("usage") or {}
        text, _ = cut_at_stop(text, config.stop)
        return Generation(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          choice.get("finish_reason") or "stop")

    def stream(self, prompt: Prompt, config: GenerationConfig | None = None) -> TextStream:
        config = config or GenerationConfig()
        return TextStream(lambda out: self._stream(prompt, config, out))

    def _stream(self, prompt: Prompt, config: GenerationConfig, out: TextStream) -> Iterator[str]:
        body = self._body(prompt, config, stream=True)
        text = ""
        with self._open(body) as resp:
            for raw in resp:
                if out.cancelled.is_set():  # closing the response tells the endpoint to stop
                    out.finish_reason = "cancelled"
                    return
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = json.loads(payload)
                    choices = event.get("choices") or []
                    delta = choices[0].get("delta", {}) if choices else {}
                except (ValueError, KeyError, IndexError, AttributeError) as e:
                    raise BackendError(f"{self.base_url} sent a malformed stream event: {payload[:200]}") from e
                if choices and choices[0].get("finish_reason"):
                    out.finish_reason = choices[0]["finish_reason"]
                if (event.get("usage") or {}).get("completion_tokens") is not None:
                    out.completion_tokens = int(event["usage"]["completion_tokens"])
                if delta.get("content"):
                    text += delta["content"]
                    yield delta["content"]
        out.finish_reason = out.finish_reason or "stop"
        if not out.completion_tokens and text:
            out.completion_tokens = self.count_tokens(text)
