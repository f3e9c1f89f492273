"""`ragkit serve`: an OpenAI-compatible HTTP server over a ragkit pipeline (FastAPI + uvicorn).

`app` holds the routes (each: check → one core call → render), `schema` the request bodies, `sse`
the one streaming helper (server-sent events that cancel the generation when the client leaves).
"""
from ragkit.server.app import APIError, RagkitServer, create_app, serve

__all__ = ["APIError", "RagkitServer", "create_app", "serve"]
