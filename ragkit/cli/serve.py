"""`ragkit serve`: the OpenAI-compatible HTTP server."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ragkit.errors import RagkitError
from ragkit.cli.console import _config_with_adapters, _fail, err


def serve(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Pipeline YAML (index, LLM, retrieval, server)."),
    index_dir: Optional[str] = typer.Option(None, "--index", help="Index folder or postgresql:// store URL (overrides the config's)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default."),
    port: int = typer.Option(8000, help="Port to listen on."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a", help="Domain adapter (name under adapters/ or folder); repeat to stack. Added after the config's adapters."),
) -> None:
    """OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models,
    /v1/retrieve, /healthz. Set the variable named by server.api_key_env (RAGKIT_API_KEY) to require a key."""
    try:
        from ragkit.server import serve as run_server

        config = _config_with_adapters(config_file, adapter)
        if index_dir:
            config.index = str(index_dir)
        if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(config.server.api_key_env or ""):
            err.print(f"[yellow]warning:[/] serving on {host} without an API key (set {config.server.api_key_env})")
        run_server(config, host, port, log_level)
    except (RagkitError, ImportError) as e:
        _fail(e)
