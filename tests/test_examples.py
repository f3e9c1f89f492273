"""The examples run offline, as a user runs them: as scripts, against real saved indexes and a real
`ragkit serve` process (packaged MiniLM and SmolLM2; short generations)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAGKIT = str(Path(sys.executable).with_name("ragkit"))


def run(args: list[str], env: dict | None = None, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory, topic_docs):
    folder = tmp_path_factory.mktemp("docs") / "pyref"
    folder.mkdir()
    for d in topic_docs[:25]:
        (folder / f"{d.title}.txt").write_text(d.text[:3000], encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def saved_index(tmp_path_factory, docs_folder, encoder):
    from ragkit import Index

    path = tmp_path_factory.mktemp("idx") / "pyref"
    Index.build(docs_folder, encoder=encoder).save(path)
    return path


@pytest.mark.slow
def test_qa_bot_indexes_a_folder_once_and_answers_with_sources(docs_folder, tmp_path):
    env = {"RAGKIT_INDEX_DIR": str(tmp_path), "RAGKIT_MAX_NEW_TOKENS": "16"}
    out = run(["examples/qa_bot.py", str(docs_folder), "What does the assert statement do?"], env)
    manifest = tmp_path / "pyref" / "manifest.json"
    assert manifest.exists() and "Q: What does the assert statement do?" in out
    sources = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(sources) == 3 and "assert" in sources[0]
    before = manifest.stat().st_mtime_ns
    out = run(["examples/qa_bot.py", str(docs_folder), "How do for loops work?"], env)
    assert manifest.stat().st_mtime_ns == before and "Sources:" in out  # loaded, not rebuilt


@pytest.mark.slow
def test_llama_index_example_answers_from_a_ragkit_index(saved_index):
    pytest.importorskip("llama_index.core")
    out = run(["examples/llama_index_query.py", str(saved_index), "What does the assert statement do?", "--rerank"],
              {"RAGKIT_MAX_NEW_TOKENS": "16"})
    lines = out.splitlines()
    assert lines[0] == "Q: What does the assert statement do?" and lines[1].startswith("A: ") and len(lines[1]) > 3
    sources = [line for line in lines if line.startswith("  [")]
    assert len(sources) == 3 and "assert" in sources[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_openai_client_app_against_ragkit_serve(saved_index, tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    port = free_port()
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"index: {saved_index}\nretrieval: {{k: 3}}\nserver: {{max_tokens: 128}}\n")
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([RAGKIT, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert json.loads(r.read())["index"]["documents"] == 25
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.time() < deadline, "ragkit serve did not come up"
                time.sleep(0.5)
        out = run(["examples/openai_client_app.py", "What does the assert statement do?"],
                  {"RAGKIT_BASE_URL": f"http://127.0.0.1:{port}/v1"})
        lines = out.splitlines()
        assert any(line.startswith("[1] ") and "assert" in line for line in lines), out
        assert sum(line.startswith("[") for line in lines) >= 3 and lines[-1] == "embedding: 384 dimensions"
    finally:
        server.terminate()
        server.wait(20)
        log.close()
