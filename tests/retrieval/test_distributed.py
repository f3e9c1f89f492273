"""Chunking and encoding on a local 2-CPU Ray cluster give the index local encoding gives."""
from dataclasses import replace

import numpy as np
import pytest

from ragkit import Index, IndexConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ragkit[ray]'; make test installs it)")
    from ragkit.retrieval.distributed import ray_cluster

    with ray_cluster(num_cpus=2) as ray:
        yield ray


def test_ray_index_equals_local_index(cluster, topic_docs, encoder):
    from ragkit.retrieval.distributed import on_ray

    docs = [replace(d, text=d.text[:3000]) for d in topic_docs[:40]]  # long enough for several chunks each
    local = Index.build(docs, encoder=encoder)
    remote = Index(IndexConfig(), encoder=encoder)
    with on_ray(remote, workers=2):
        remote.add(docs)
    assert remote.retrievers["dense"].encoder is encoder  # the local encoder is back for queries
    assert [c.to_dict() for c in remote.chunks] == [c.to_dict() for c in local.chunks]
    assert len(local.chunks) > len(docs)
    ids_l, v_l = local.retrievers["dense"].store.export()
    ids_r, v_r = remote.retrievers["dense"].store.export()
    assert ids_r == ids_l
    assert np.abs(v_r - v_l).max() < 1e-4
    q = "exception handling in a try statement"
    assert [h.chunk_id for h in remote.search(q, 5)] == [h.chunk_id for h in local.search(q, 5)]


def test_cli_index_with_ray(tmp_path, topic_docs):
    import json

    from typer.testing import CliRunner

    from ragkit.cli import app

    pytest.importorskip("ray", reason="Ray is not installed")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text[:800]}) + "\n" for d in topic_docs[:12]))
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "ray"), "--ray"])
    assert r.exit_code == 0, r.output
    r2 = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "local")])
    assert r2.exit_code == 0, r2.output
    a, b = Index.load(tmp_path / "ray"), Index.load(tmp_path / "local")
    q = "assert statement"
    assert [h.chunk_id for h in a.search(q, 5)] == [h.chunk_id for h in b.search(q, 5)]
