"""Without the `server` extra, `ragkit serve` and `import ragkit.server` say how to install it."""
import importlib

import pytest
from typer.testing import CliRunner

HINT = "pip install 'ragkit[server]'"


@pytest.mark.parametrize("module", ["fastapi", "uvicorn"])
def test_missing_server_extra_gives_the_install_hint(missing, module):
    missing(module, forget=["ragkit.server"])
    with pytest.raises(ImportError, match=r"pip install 'ragkit\[server\]'"):
        importlib.import_module("ragkit.server")


def test_ragkit_serve_without_fastapi_prints_the_hint(missing):
    from ragkit.cli import app

    missing("fastapi", forget=["ragkit.server"])
    r = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert r.exit_code != 0 and HINT in r.output, r.output
