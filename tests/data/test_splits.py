"""Leak-checked train/validation/test splits for domain adapters (`ragkit adapter split`)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from ragkit.data.splits import write_split
from ragkit.cli import app


def _docs() -> dict[str, str]:
    return {f"doc{i}": f"Document {i} talks about topic {i % 7} in its own words, number {i}.\n" * 20 for i in range(40)}


def test_split_reports_where_its_documents_came_from(tmp_path):
    assert write_split(tmp_path / "given", _docs())["source"] == "given documents"
    assert write_split(tmp_path / "named", _docs(), source="my wiki")["source"] == "my wiki"
    report = write_split(tmp_path / "pydocs")
    assert report["source"] == "pydoc_data.topics"
    assert json.loads((tmp_path / "pydocs" / "split.json").read_text())["source"] == "pydoc_data.topics"
    assert sum(v["documents"] for v in report["splits"].values()) > 50


def test_adapter_split_gives_clean_errors(tmp_path):
    runner = CliRunner()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for args in (["adapter", "split", str(a_file)],
                 ["adapter", "split", str(tmp_path / "out"), "--valid", "0.9", "--test", "0.5"],
                 ["adapter", "split", str(tmp_path / "out"), "--valid", "-0.1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output
    assert a_file.read_text() == "x"
