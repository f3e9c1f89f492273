"""Server-sent events and client-disconnect handling, the one place the server streams from.

A generation runs in a decoding thread; the HTTP side must never wait on it from inside that thread
nor rely on the garbage collector to close an abandoned iterator (both deadlocked an earlier server).
So every answer has a non-blocking `cancel()`, and the two helpers here call it the moment the
client goes away: `EventStream` (streaming responses) and `collect` (plain ones).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event holding `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """A `text/event-stream` response over a (sync) iterator of events that calls `on_close` — which
    must not block — as soon as the client disconnects, and again when the response ends in any way."""

    def __init__(self, events: Iterable[bytes], on_close: Callable[[], None], headers: dict | None = None) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we were writing
                        self.on_close()
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await _wait_for_disconnect(receive)
                    self.on_close()  # first: the decoding thread stops, so the reader below returns
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch)
        finally:
            self.on_close()


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


async def collect(work: Callable[[], Any], on_close: Callable[[], None], receive: Receive) -> Any:
    """Run `work` (blocking) in a worker thread and return its result; when the client disconnects
    first, call `on_close` (non-blocking: it cancels the generation) and raise `ClientGone`."""
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        async def run() -> None:
            try:
                result["value"] = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
            except Exception as e:  # noqa: BLE001 - re-raised below, outside the task group
                result["error"] = e
            tg.cancel_scope.cancel()

        async def watch() -> None:
            await _wait_for_disconnect(receive)
            on_close()
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        tg.start_soon(watch)
    if "error" in result:
        raise result["error"]
    if "value" not in result:
        raise ClientGone()
    return result["value"]
