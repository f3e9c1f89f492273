"""Progress bars for long steps (rich, on stderr); silent when disabled or not on a terminal."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def default_enabled() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a rich bar with rate and ETA when enabled."""
    if enabled is None:
        enabled = default_enabled()
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
