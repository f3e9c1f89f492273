"""Terminal output shared by every command: consoles, safe printing of untrusted text, one error format."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ragkit.runtime import QUERY_THREADS, torch_threads

out = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass

# C0 and C1 control characters (ESC starts ANSI/OSC sequences that retitle, recolour or clear the
# terminal) and the bidirectional overrides; newline and tab are kept in multi-line text only.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(value, lines: bool = True) -> str:
    """`value` with control characters shown as visible escapes (`\\x1b`); for text printed with
    markup off (streamed answers). `lines` keeps newlines and tabs."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_visible, str(value))


def _safe(value, lines: bool = False) -> str:
    """Text from an index, a corpus or an error, made safe to print with rich: control characters
    shown as visible escapes (`\\x1b`), rich markup escaped. `lines` keeps newlines and tabs."""
    return escape(printable(value, lines))


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {_safe(e, lines=True)}", soft_wrap=True)
    raise typer.Exit(2)


def _waiting(path: Path):
    """on_wait for the writer lock: say whom we wait for."""
    return lambda pid: err.print(f"waiting for {'process %s' % pid if pid else 'another writer'} to finish "
                                 f"writing {_safe(path)}")


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def query_threads(command):
    """Run a command on the query-time thread policy (`ragkit.runtime.QUERY_THREADS` torch threads:
    two OpenMP threads on 2 busy cores made a 40 ms query take ~1 s), restored afterwards."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with torch_threads(QUERY_THREADS):
            return command(*args, **kwargs)
    return run


def _config_with_adapters(config_file, adapters):
    """The YAML config (or defaults) with the command line's --adapter entries appended."""
    from ragkit.config import PipelineConfig, adapter_specs

    config = PipelineConfig.from_yaml(config_file) if config_file else PipelineConfig()
    if adapters:
        adapter_specs(list(adapters), "--adapter")
        config.adapters = list(config.adapters or []) + list(adapters)
    return config
