"""`ragkit serve`: an OpenAI-compatible HTTP server over a ragkit pipeline (FastAPI + uvicorn).

Endpoints: `GET /` (a chat page: static files in `ragkit/server/static`, no network needed),
`POST /v1/chat/completions`, `POST /v1/completions` (OpenAI shapes, `stream: true` as
server-sent events, usage counts), `POST /v1/embeddings` (the index's dense encoder),
`GET /v1/models`, `POST /v1/retrieve` (ragkit search), `GET /healthz`.

Retrieval comes from the pipeline config and is on whenever the config names an index. A request
overrides it with an extension field, `"ragkit": {"retrieval": false, "k": 3, "retriever": "bm25"}`
(with the official client: `extra_body={"ragkit": {...}}`). Answers carry `[n]` citations in their
text and the numbered sources in the response's `ragkit` field (in the last chunk when streaming).

Domain adapters from the config's `adapters:` (or `ragkit serve --adapter NAME`) apply to every
answer with retrieval; `/v1/models` lists them under the chat model's `ragkit` field and answers
report the knowledge section (black-box adapters) in theirs.

Concurrency: one model instance serves every request. Generations that arrive while the local
model decodes join its shared batch (`server.max_batch` rows; see
`ragkit.generation.llm.batching`); at most `server.max_queue` wait for a row, and more get 503
with `Retry-After`. Generations with white-box adapters run one at a time (`/v1/models` says
which mode is on). Retrieval, embeddings and request parsing run concurrently in the worker
thread pool. Security: binds to loopback unless told otherwise; when
the config's `server.api_key_env` variable is set, every `/v1` request needs
`Authorization: Bearer <key>` (compared in constant time); request bodies and `max_tokens` are
capped; errors have OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from ragkit.config import PipelineConfig
from ragkit.errors import PromptTooLongError, RagkitError, ServerBusyError, UnknownRetrieverError
from ragkit.generation.llm.base import GenerationConfig, Message
from ragkit.generation.pipeline import Pipeline

try:
    import anyio
    import uvicorn  # noqa: F401 - `serve` needs it: a missing one is reported here, with the hint
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("ragkit serve needs FastAPI and uvicorn: pip install 'ragkit[server]'") from e

from ragkit.server.schema import ChatRequest, CompletionRequest, EmbeddingRequest, RagkitOptions, RetrieveRequest, Sampling
from ragkit.server.sse import DONE, ClientGone, EventStream, collect, sse


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


# -- the app ----------------------------------------------------------------------------------------
class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether it declares its length
    or arrives chunked (it is read, up to the limit, before the app sees it)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body larger than {self.limit} bytes", code="request_too_large").response()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class _Auth:
    """ASGI middleware: when an API key is set, every request but `/healthz` needs
    `Authorization: Bearer <key>` (constant-time comparison), checked before the body is read."""

    OPEN = ("/", "/healthz")  # and the chat page's static files: the page asks for the key itself

    def __init__(self, app, state: "RagkitServer") -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        key = self.state.api_key
        path = scope.get("path", "")
        if scope["type"] != "http" or not key or path in self.OPEN or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            return await APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                                  "authentication_error", code="invalid_api_key").response()(scope, receive, send)
        return await self.app(scope, receive, send)


class RagkitServer:
    """The state behind the app: one pipeline (index, LLM, reranker) and one encoder, shared, and
    the answers in flight (cancelled together at shutdown)."""

    def __init__(self, pipeline: Pipeline, config: PipelineConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = config or pipeline.config
        self.model_name = self.config.server.model_name or pipeline.llm.model_id
        self._encoder = pipeline.index.encoder if pipeline.index is not None else None
        self._encoder_lock = threading.Lock()
        key_env = self.config.server.api_key_env
        self.api_key = os.environ.get(key_env, "") if key_env else ""
        self._runs: set[_Run] = set()
        self._runs_lock = threading.Lock()
        if hasattr(pipeline.llm, "enable_batching"):  # local models: concurrent answers share one batch
            pipeline.llm.enable_batching(self.config.server.max_batch, self.config.server.max_queue)

    def batching(self) -> dict | None:
        describe = getattr(self.pipeline.llm, "batching", None)
        return describe() if describe is not None else None

    @property
    def encoder(self):
        with self._encoder_lock:
            if self._encoder is None:
                from ragkit.retrieval.encoder import SentenceEncoder

                self._encoder = SentenceEncoder.from_pretrained("default")
            return self._encoder

    @property
    def embedding_model(self) -> str:
        if self.pipeline.index is not None and self.pipeline.index.encoder is not None:
            return self.pipeline.index.encoder.model_id
        from ragkit.retrieval.encoder import DEFAULT_ENCODER

        return DEFAULT_ENCODER

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 503 and status "wedged" when decoding has made no step for
        `server.stall_seconds` while holding the model."""
        index = self.pipeline.index
        activity = getattr(self.pipeline.llm, "activity", None)
        generation = activity.snapshot() if activity is not None else None
        wedged = bool(generation and generation["busy"]
                      and generation["since_last_step_s"] > self.config.server.stall_seconds)
        body = {"status": "wedged" if wedged else "ok", "model": self.model_name,
                "adapters": [a.name for a in self.pipeline.adapters], "generation": generation,
                "batching": self.batching(),
                "in_flight": len(self._runs),
                "retrieval": {"k": self.config.retrieval.k},
                "index": None if index is None else {**index.manifest()["counts"], "retrievers": index.retriever_names,
                                                     "default_retriever": self.config.retrieval.retriever
                                                     or index.default_retriever}}
        return (503 if wedged else 200), body

    # -- checks --------------------------------------------------------------------------------
    def check_model(self, name: str, kind: str = "chat") -> None:
        allowed = {self.model_name, self.pipeline.llm.model_id, "ragkit"} if kind == "chat" else \
            {self.embedding_model, self.embedding_model.split("/")[-1], "ragkit-embed"}
        if name not in allowed:
            raise APIError(404, f"the model {name!r} does not exist here; this server has {sorted(allowed)}",
                           param="model", code="model_not_found")

    def generation(self, req: Sampling) -> GenerationConfig:
        limit = self.config.server.max_tokens
        wanted = req.max_completion_tokens or req.max_tokens or min(self.config.generation.max_new_tokens, limit)
        if wanted > limit:
            raise APIError(400, f"max_tokens is {wanted}, more than this server allows ({limit})", param="max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        return GenerationConfig(max_new_tokens=wanted, temperature=req.temperature, top_p=req.top_p, stop=stop,
                                seed=req.seed)

    def retrieval(self, opts: RagkitOptions | None) -> tuple[bool, int | None, str | None]:
        opts = opts or RagkitOptions()
        on = self.pipeline.index is not None if opts.retrieval is None else opts.retrieval
        if on and self.pipeline.index is None:
            raise APIError(400, "retrieval was asked for but the server's config names no index", param="ragkit.retrieval")
        if opts.retriever and self.pipeline.index is not None:
            _check_retriever(self.pipeline.index, opts.retriever, "ragkit.retriever")
        return on, opts.k, opts.retriever

    # -- answering -----------------------------------------------------------------------------
    def answer(self, messages: list[Message] | str, gen: GenerationConfig, opts: RagkitOptions | None,
               retrieval: bool | None = None) -> "_Run":
        """Start an answer (runs in a worker thread: retrieval and the prompt-length check happen
        now, generation when the run is iterated). A string is a raw prompt to continue."""
        if retrieval is None:
            retrieval = self.retrieval(opts)[0]
        try:
            return self._track(self._start(messages, gen, opts, retrieval))
        except PromptTooLongError as e:
            raise APIError(400, str(e), param="messages" if isinstance(messages, list) else "prompt",
                           code="context_length_exceeded") from e

    def _start(self, messages, gen: GenerationConfig, opts, retrieval: bool) -> "_Run":
        llm = self.pipeline.llm
        if isinstance(messages, str):  # raw continuation
            return _Run(llm.stream(messages, gen), lambda: llm.count_tokens(messages))
        if not retrieval:
            if not any(m["content"].strip() for m in messages):
                raise APIError(400, "no message has text to answer (tool messages are not read)", param="messages")
            return _Run(llm.stream(messages, gen), lambda: llm.check_prompt(messages, 0))
        _, k, retriever = self.retrieval(opts)
        system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer")) or None
        turns = [m for m in messages if m["role"] in ("user", "assistant")]
        if not turns or turns[-1]["role"] != "user":
            raise APIError(400, "the last message must be the user's question", param="messages")
        question, history = turns[-1]["content"], turns[:-1]
        try:
            stream = self.pipeline.stream(question, gen, history, k=k, retriever=retriever, system=system)
        except PromptTooLongError:
            raise
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from e
        return _Run(stream, lambda: stream.answer.prompt_tokens if stream.answer else 0, stream)

    def _track(self, run: "_Run") -> "_Run":
        with self._runs_lock:
            self._runs.add(run)
        run.on_end = self._untrack
        return run

    def _untrack(self, run: "_Run") -> None:
        with self._runs_lock:
            self._runs.discard(run)

    def cancel_all(self) -> int:
        """Cancel every answer in flight (shutdown); returns how many."""
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.cancel()
        return len(runs)


class _Run:
    """A started answer: its text pieces (from a backend `TextStream` or a pipeline
    `AnswerStream`), then its finish reason, usage and ragkit extension. `cancel()` never blocks."""

    def __init__(self, pieces, prompt_tokens, answer_stream=None) -> None:
        self.pieces, self._prompt_tokens, self.answer_stream = pieces, prompt_tokens, answer_stream
        self.text = ""
        self.on_end = None

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self.pieces:
                self.text += piece
                yield piece
        finally:
            self._end()

    def collect(self) -> str:
        return "".join(self)

    def cancel(self) -> None:
        self.pieces.cancel()
        self._end()

    def _end(self) -> None:
        if self.on_end is not None:
            self.on_end(self)

    def finish(self) -> tuple[str, dict, dict | None]:
        """(finish reason, usage, ragkit extension): the reason is the backend's, and completion
        tokens are the model's own (not ragkit's appended citation markers)."""
        s = self.answer_stream
        backend = s.text_stream if s is not None else self.pieces
        reason = getattr(backend, "finish_reason", None) or "stop"
        completion = s.answer.completion_tokens if s is not None and s.answer is not None else \
            getattr(backend, "completion_tokens", 0)
        prompt = self._prompt_tokens()
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return reason, usage, self._extension()

    def _extension(self) -> dict | None:
        stream = self.answer_stream
        if stream is None or stream.answer is None:
            return None
        return {**stream.answer.to_dict(text=False), "retrieve_ms": round(stream.timings["retrieve_s"] * 1000, 2)}


def _check_retriever(index, name: str, param: str) -> None:
    try:
        index.check_retriever(name)
    except UnknownRetrieverError as e:
        raise APIError(400, str(e), param=param) from e


def _vector(v, encoding: str):
    """A float list, or base64 of little-endian float32 (what the official client asks for)."""
    if encoding == "base64":
        import base64

        import numpy as np

        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
    return [float(x) for x in v]


def _error_event(e: Exception) -> bytes:
    return sse({"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "param": None, "code": None}})


def create_app(pipeline: Pipeline, config: PipelineConfig | None = None) -> FastAPI:
    """The FastAPI app over one shared pipeline."""
    from ragkit._version import __version__

    state = RagkitServer(pipeline, config)
    docs = state.config.server.docs
    app = FastAPI(title="ragkit", version=__version__,
                  description="OpenAI-compatible endpoints with ragkit retrieval and citations.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.ragkit = state
    app.add_middleware(_BodyLimit, limit=state.config.server.max_request_bytes)
    app.add_middleware(_Auth, state=state)  # added last: runs first, before the body is read

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        if first.get("type") == "json_invalid":
            return APIError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(),
                            code="invalid_json").response()
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []) if x != 'body') or 'body'}: {e.get('msg')}"
                        for e in errors[:5])
        return APIError(400, f"invalid request: {msg}", param=".".join(loc) or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(PromptTooLongError)
    async def _too_long(request: Request, exc: PromptTooLongError):
        return APIError(400, str(exc), code="context_length_exceeded").response()

    @app.exception_handler(ServerBusyError)
    async def _busy(request: Request, exc: ServerBusyError):
        return APIError(503, str(exc), "server_error", code="server_busy",
                        headers={"Retry-After": str(exc.retry_after)}).response()

    @app.exception_handler(RagkitError)
    async def _ragkit_error(request: Request, exc: RagkitError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    static = Path(__file__).with_name("static")
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def chat_page():
        """The chat page (ragkit/server/static): ask, watch the answer stream, open its sources."""
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/healthz")
    def healthz():
        status, body = state.health()
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    def models() -> dict:
        chat = {"id": state.model_name, "object": "model", "created": 0, "owned_by": "ragkit"}
        ext = {}
        if state.pipeline.adapters:  # the domain adapters every answer goes through
            ext["adapters"] = [a.describe() for a in state.pipeline.adapters]
        if state.batching() is not None:  # batched or serial decoding, and why
            ext["batching"] = state.batching()
        if ext:
            chat["ragkit"] = ext
        return {"object": "list", "data": [
            chat,
            {"id": state.embedding_model, "object": "model", "created": 0, "owned_by": "ragkit"}]}

    async def respond(run: _Run, request: Request, stream: bool, render_final, render_piece, first=None,
                      usage_event=None):
        """The answer as one JSON body, or as server-sent events; the generation is cancelled the
        moment the client goes away, either way."""
        if not stream:
            try:
                text = await collect(run.collect, run.cancel, request.receive)
            except ClientGone:
                return Response(status_code=499)
            return render_final(text, *run.finish())

        def events() -> Iterator[bytes]:
            try:
                if first is not None:
                    yield sse(first)
                for piece in run:
                    yield sse(render_piece(piece))
                reason, usage, ext = run.finish()
                yield sse(render_final(None, reason, usage, ext))
                if usage_event is not None:
                    yield sse(usage_event(usage))
            except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
                yield _error_event(e)
            yield DONE

        return EventStream(events(), run.cancel)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        state.check_model(req.model)
        gen = state.generation(req)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages if m.role != "tool"]
        run = await anyio.to_thread.run_sync(state.answer, messages, gen, req.ragkit)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": state.model_name}
        chunk = {**base, "object": "chat.completion.chunk"}

        def final(text, reason, usage, ext):
            if text is None:  # the last streamed chunk
                body = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
            else:
                body = {**base, "object": "chat.completion", "usage": usage,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": reason, "logprobs": None}]}
            return {**body, "ragkit": ext} if ext is not None else body

        include_usage = bool((req.stream_options or {}).get("include_usage"))
        return await respond(
            run, request, req.stream, final,
            lambda piece: {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
            first={**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]},
            usage_event=(lambda usage: {**chunk, "choices": [], "usage": usage}) if include_usage else None)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        state.check_model(req.model)
        gen = state.generation(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1 or not prompts[0].strip():
            raise APIError(400, "prompt must be one non-empty string", param="prompt")
        retrieval, _, _ = state.retrieval(req.ragkit)
        # with retrieval the prompt is a question (sources and citations as for chat); else raw text to continue
        prompt = [{"role": "user", "content": prompts[0]}] if retrieval else prompts[0]
        run = await anyio.to_thread.run_sync(state.answer, prompt, gen, req.ragkit, retrieval)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": state.model_name}

        def final(text, reason, usage, ext):
            body = {**base, "usage": usage,
                    "choices": [{"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}]}
            return {**body, "ragkit": ext} if ext is not None else body

        return await respond(run, request, req.stream, final, lambda piece: {
            **base, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]})

    @app.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict:
        state.check_model(req.model, "embedding")
        texts = [req.input] if isinstance(req.input, str) else req.input
        limit = state.config.server.max_embedding_inputs
        if not texts or len(texts) > limit:
            raise APIError(400, f"input must hold 1 to {limit} texts", param="input")
        if any(not t for t in texts):
            raise APIError(400, "input texts must not be empty", param="input")
        encoder = state.encoder
        vectors = encoder.encode(texts)
        tok = getattr(encoder.model, "tokenizer", None)
        tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) if tok else 0
        return {"object": "list", "model": state.embedding_model,
                "data": [{"object": "embedding", "index": i, "embedding": _vector(v, req.encoding_format)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/retrieve")
    def retrieve(req: RetrieveRequest) -> dict:
        index = state.pipeline.index
        if index is None:
            raise APIError(400, "this server's config names no index", code="no_index")
        if req.retriever:
            _check_retriever(index, req.retriever, "retriever")
        t0 = time.perf_counter()
        try:
            hits = index.search(req.query, k=req.k, retriever=req.retriever)
        except ValueError as e:
            raise APIError(400, str(e), param="query") from e
        return {"object": "list", "retriever": req.retriever or index.default_retriever,
                "data": [h.to_dict() for h in hits], "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    return app


def serve(config: PipelineConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Load the pipeline once and serve it until interrupted. SIGTERM/SIGINT cancel every generation
    in flight and give open connections `server.shutdown_seconds` to close."""
    from ragkit.runtime import QUERY_THREADS, torch_threads

    # Query encoding runs in the server's worker threads: on one torch thread, as everywhere in
    # ragkit at query time (two OpenMP threads on 2 busy cores made a 40 ms query take ~1 s).
    # Prompt prefill still asks for its own `llm.prefill_threads` around each forward pass.
    with torch_threads(QUERY_THREADS):
        _serve(config, host, port, log_level)


def _serve(config: PipelineConfig, host: str, port: int, log_level: str) -> None:
    import uvicorn

    app = create_app(Pipeline.from_config(config), config)
    state: RagkitServer = app.state.ragkit

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            state.cancel_all()
            super().handle_exit(sig, frame)

    _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                           timeout_graceful_shutdown=max(1, int(config.server.shutdown_seconds)))).run()
