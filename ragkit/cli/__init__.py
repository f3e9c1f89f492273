"""The `ragkit` command line: thin shells over the Python API (options in, one core call, rendering out).

One module per command group; `console` is the leaf they share (consoles, safe printing, `_fail`).
This module builds the one Typer app and registers every command in one place.
"""
from __future__ import annotations

import typer

from ragkit.cli import answer, evaluate, index, models, serve, tune
from ragkit.cli.adapter import adapter_app
from ragkit.cli.colbert import app as colbert_app
from ragkit.cli.console import _quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # help keeps [extras]
                  help="ragkit: retrieval and domain adapters that make an LLM good at your domain.")


@app.callback()
def main() -> None:
    """ragkit: retrieval and domain adapters that make an LLM good at your domain."""
    _quiet_libraries()


app.command()(index.index)
app.command()(index.search)
app.command()(index.add)
app.command()(index.delete)
app.command()(index.info)
app.command()(tune.tune)
app.command()(answer.ask)
app.command()(answer.chat)
app.command("eval-qa")(evaluate.eval_qa)
app.command("eval")(evaluate.eval_)
app.command()(serve.serve)
app.command()(models.prepare)
app.add_typer(colbert_app, name="colbert")
app.add_typer(adapter_app, name="adapter")

__all__ = ["app"]
