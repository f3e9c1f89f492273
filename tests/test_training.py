"""The one resumable training loop (`ragkit.training`): its checkpoints are safetensors + JSON only,
a resumed run equals an uninterrupted one, an older ragkit's pickled checkpoint is refused, thread
counts are restored, no pickle anywhere in ragkit's code, and `train_adapter` is the core of
`ragkit adapter train`."""
from __future__ import annotations

import io
import json
import tokenize
from pathlib import Path

import pytest
import torch

from ragkit.errors import AdapterError, ModelLoadError, RagkitError

ROOT = Path(__file__).resolve().parents[1]


def _run(ckpt: Path, steps: int = 6, save_every: int = 2, crash_at: int | None = None, threads: int | None = None):
    """A small model with dropout (so torch's random state matters) trained by `train_loop`."""
    from ragkit.training import train_loop

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[2].parameters(), "lr": 3e-2}])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)

    def step_loss(step: int):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated interruption")
        i = (step * 4) % 32
        return torch.nn.functional.mse_loss(model(x[i:i + 4]), y[i:i + 4])

    r = train_loop(model, opt, steps, step_loss, ckpt, schedule=lambda s: 1 - s / steps, save_every=save_every,
                   seeds={"seed": 0}, threads=threads, progress=False, loss_digits=6)
    return model, r


def test_checkpoint_is_safetensors_and_json_only_and_resume_equals_an_uninterrupted_run(tmp_path):
    from ragkit.training import FORMAT, OPTIMIZER_FILE, STATE_FILE

    whole, r_whole = _run(tmp_path / "whole")
    ckpt = tmp_path / "run" / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt, crash_at=5)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    assert files and all(p.suffix in (".safetensors", ".json") for p in files), files
    for p in files:  # no pickle (protocol 2+ starts with 0x80) and no torch zip archive
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", p
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert state["format"] == FORMAT and state["step"] == 4 and len(state["losses"]) == 4
    assert state["seeds"] == {"seed": 0} and len(state["scheduler"]["base_lrs"]) == 2
    from safetensors import safe_open

    with safe_open(str(ckpt / OPTIMIZER_FILE), "pt") as f:
        keys = set(f.keys())
    assert {"0.weight::exp_avg", "0.weight::exp_avg_sq", "0.weight::step", "2.bias::exp_avg"} <= keys
    resumed, r = _run(ckpt)
    assert r["resumed_from_step"] == 4 and r["losses"][:4] == state["losses"] and len(r["losses"]) == 6
    assert r["losses"] == r_whole["losses"]
    for (n, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n  # resumed == uninterrupted, dropout included


def test_a_checkpoint_from_an_older_ragkit_is_refused_and_never_loaded(tmp_path, monkeypatch):
    import pickle

    def never(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "optimizer.pt").write_bytes(b"\x80\x04not really")
    (ckpt / "state.json").write_text(json.dumps({"step": 2, "losses": [1.0, 0.9], "scheduler": {}}))
    with pytest.raises(RagkitError, match=r"checkpoint from an older ragkit; delete .*checkpoint to restart"):
        _run(ckpt)
    (ckpt / "optimizer.pt").unlink()  # a state.json of no known format (an older ColBERT train_state)
    with pytest.raises(RagkitError, match="checkpoint from an older ragkit"):
        _run(ckpt)
    assert (ckpt / "state.json").is_file()  # left for the user to delete


def test_the_adapter_trainer_refuses_an_older_checkpoint(tmp_path):
    from tests.adaptation.test_adapters_whitebox import tiny_llm_folder, tiny_text

    from ragkit.adaptation.train import finetune

    out = tmp_path / "exp"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "optimizer.pt").write_bytes(b"\x80\x04")
    with pytest.raises(RagkitError, match=f"checkpoint from an older ragkit; delete {out / 'checkpoint'} to restart"):
        finetune(str(tiny_llm_folder(tmp_path)), tiny_text(), out, kind="full", steps=2, block=16, batch=2,
                 threads=1, progress=False)


def test_the_loop_restores_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    _, r = _run(tmp_path / "ck", steps=2, threads=before + 1)
    assert r["threads"] == before + 1 and torch.get_num_threads() == before


def test_train_colbert_restores_the_thread_count(tmp_path, topic_docs):
    import ragkit.retrieval.colbert.train as tc

    docs = topic_docs[:6]
    triples = [(d.title, d.text[:300], docs[(i + 1) % len(docs)].text[:300]) for i, d in enumerate(docs)]
    before = torch.get_num_threads()
    config = tc.TrainConfig(init="identity", freeze_layers=-1, steps=1, batch_size=2, warmup=0.0, doc_maxlen=32,
                            save_every=0, threads=before + 1)
    res = tc.train_colbert(triples, tmp_path / "ck", config, show_progress=False)
    assert res["threads"] == before + 1 and torch.get_num_threads() == before


def _code_tokens(path: Path) -> list[str]:
    """The names and operators of a Python file: no strings, no comments, no docstrings."""
    toks = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [t.string for t in toks if t.type in (tokenize.NAME, tokenize.OP)]


def test_no_pickle_anywhere_in_ragkit():
    banned_modules = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    found = []
    for path in sorted((ROOT / "ragkit").rglob("*.py")):
        toks = _code_tokens(path)
        rel = path.relative_to(ROOT)
        for i, t in enumerate(toks):
            if t in banned_modules:
                found.append(f"{rel}: {t}")
            if t == "torch" and toks[i + 1:i + 3] in (([".", "save"]), ([".", "load"])):
                found.append(f"{rel}: torch.{toks[i + 2]}")
            if t in ("allow_pickle", "weights_only") and toks[i + 1:i + 2] == ["="]:
                if toks[i + 2:i + 3] != (["False"] if t == "allow_pickle" else ["True"]):
                    found.append(f"{rel}: {t}={toks[i + 2]}")
    assert not found, found


def test_colbert_checkpoint_with_only_pytorch_model_bin_is_refused(tmp_path):
    from ragkit.retrieval.colbert.model import _read_tensor

    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ModelLoadError, match="safetensors"):
        _read_tensor(tmp_path, "linear.weight")


def test_train_adapter_is_the_core_of_adapter_train(tmp_path):
    import ragkit
    from ragkit.adaptation.kinds import KINDS
    from ragkit.adaptation.train import train_adapter
    from tests.adaptation.test_adapters_whitebox import tiny_llm_folder, tiny_text

    assert ragkit.train_adapter is train_adapter
    with pytest.raises(AdapterError) as e:
        train_adapter("nope", "-", tmp_path / "x")
    assert "'nope'" in str(e.value) and all(k in str(e.value) for k in KINDS)
    with pytest.raises(AdapterError, match="give a corpus"):
        train_adapter("distill", "-", tmp_path / "x")
    corpus = tmp_path / "train.txt"
    corpus.write_text(tiny_text())
    llm = tiny_llm_folder(tmp_path)
    path = train_adapter("distill", corpus, tmp_path / "small", base=str(llm), layers=1, steps=2, block=16, batch=2,
                         threads=1, progress=False)
    m = ragkit.load_adapter(path).manifest
    assert m["kind"] == "distill" and m["training"]["layers"] == [1] and m["training"]["steps"] == 2
    assert m["training"]["corpus"] == str(corpus) and not (path / "checkpoint").exists()
    px = train_adapter("poe", None, tmp_path / "poe", base=str(llm), small=str(path))
    assert ragkit.load_adapter(px).kind == "poe"
