"""kNN-LM datastores: keys are the LLM's hidden states over a domain text - its lm_head inputs
(`key="lm_head_input"`, the default) or the inputs of its last feed-forward block
(`key="ffn_input"`, Khandelwal et al.'s best key; measured here, README) - and values the next
token ids; searched by squared L2 with faiss at decode time (`KNNLMProcessor`).

Build: the text is tokenized once and run through the LLM in windows of `window` tokens with
`stride` new tokens each (every key but those of the first window sees `window − stride` tokens of
left context), on `threads` torch threads. Files: `keys.faiss` (faiss `IndexFlatL2`, exact; or
`IndexIVFFlat` with `nlist` lists when `ivf=True`, for stores of millions of keys), `values.npy`
(int64), `manifest.json` with params k, temperature, lambda (fitted later by `ragkit adapter fit`)
and the build speed (tokens/s).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ragkit.runtime import torch_threads
from ragkit.integrity import read_npy
from ragkit.adaptation.base import AdapterError, LogitsAdapter, new_manifest, tokenizer_fingerprint, write_adapter
from ragkit.adaptation.logits import KNN_KEYS, KNNLMProcessor, capture_key

KEYS = "keys.faiss"
VALUES = "values.npy"


def window_positions(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of sliding windows: every position 1..n-1 is scored
    (predicted from its left context) exactly once."""
    if stride > window or stride <= 0:
        raise ValueError(f"stride must be in 1..window, got stride {stride}, window {window}")
    out, start, done = [], 0, 1
    while done < n_tokens:
        end = min(start + window, n_tokens)
        out.append((start, end, done))  # tokens done..end-1 are scored in this window
        done = end
        start = max(0, end - (window - stride))
    return out


def llm_hidden_states(model: Any, ids, window: int = 512, stride: int = 384, threads: int | None = 2,
                      key: str = "lm_head_input"):
    """(keys [N, H] float32, values [N] int64): the key (`capture_key`) at each position p and the
    token at p+1, for every position of `ids` (1-D LongTensor) that has a next token."""
    import torch

    latest = capture_key(model, key)
    keys, values = [], []
    with torch_threads(threads), torch.inference_mode():
        for start, end, first in window_positions(len(ids), window, stride):
            x = ids[start:end].unsqueeze(0)
            model(input_ids=x, use_cache=False)
            h = latest()[0]  # [T, H]
            # position p (absolute) predicts p+1: keep p in [first-1, end-2]
            lo, hi = first - 1 - start, end - 1 - start
            keys.append(h[lo:hi].float().clone())
            values.append(ids[start + lo + 1:start + hi + 1].clone())
    return torch.cat(keys), torch.cat(values)


def build_datastore(llm_ref: str, text: str, out: str | Path, k: int = 64, temperature: float = 100.0,
                    lam: float = 0.25, window: int = 512, stride: int = 384, ivf: bool = False, nlist: int = 1024,
                    threads: int | None = 2, corpus_name: str = "", max_tokens: int | None = None,
                    key: str = "lm_head_input") -> Path:
    """Build a kNN-LM datastore adapter folder over `text` (its first `max_tokens` tokens) with the
    LLM `llm_ref`; `key`: lm_head_input or ffn_input."""
    if key not in KNN_KEYS:
        raise AdapterError(f"unknown kNN-LM key {key!r}; choose one of {', '.join(KNN_KEYS)}")
    import faiss
    import numpy as np
    import torch

    from ragkit.generation.loader import load_causal_lm

    model, tok, model_id = load_causal_lm(llm_ref, "auto")  # the format the LLM answers in (see quantize)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if max_tokens:
        ids = ids[:max_tokens]
    t0 = time.perf_counter()
    keys, values = llm_hidden_states(model, ids, window, stride, threads, key)
    forward_s = time.perf_counter() - t0
    x = keys.numpy().astype("float32")
    dim = x.shape[1]
    t1 = time.perf_counter()
    if ivf:
        quant = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quant, dim, min(nlist, max(1, len(x) // 39)))
        index.train(x)
        index.nprobe = 32
    else:
        index = faiss.IndexFlatL2(dim)
    index.add(x)
    index_s = time.perf_counter() - t1
    total = time.perf_counter() - t0
    manifest = new_manifest("knn", model_id, tok, [text],
                            training={"corpus": corpus_name, "tokens": int(len(ids)), "keys": int(len(x)),
                                      "dim": dim, "key": key, "window": window, "stride": stride,
                                      "index": "IndexIVFFlat" if ivf else "IndexFlatL2", "threads": threads,
                                      "forward_s": round(forward_s, 2), "index_s": round(index_s, 2),
                                      "build_tokens_per_s": round(len(x) / total, 1)},
                            params={"k": k, "temperature": temperature, "lambda": lam})

    def files(tmp: Path) -> None:
        faiss.write_index(index, str(tmp / KEYS))
        np.save(tmp / VALUES, values.numpy().astype("int64"), allow_pickle=False)

    return write_adapter(out, manifest, files)


class KNNAdapter(LogitsAdapter):
    """A kNN-LM datastore folder; the faiss index is read once per adapter object."""

    kind = "knn"

    def __init__(self, manifest=None, path=None) -> None:
        super().__init__(manifest, path)
        self._store = None

    def store(self):
        if self._store is None:
            import faiss
            import numpy as np
            import torch

            for f in (KEYS, VALUES):
                if not (self.path / f).is_file():
                    raise AdapterError(f"{self.path}: kNN datastore file {f} is missing")
            try:
                index = faiss.read_index(str(self.path / KEYS))
            except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError (or worse) on a bad file
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise AdapterError(f"{self.path / KEYS} is damaged: faiss cannot read it ({first})") from e
            if hasattr(index, "nprobe"):
                index.nprobe = int(self.manifest.get("params", {}).get("nprobe", 32))
            raw = read_npy(self.path / VALUES, error=AdapterError)
            if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer) or (len(raw) and raw.min() < 0):
                raise AdapterError(f"{self.path / VALUES} is damaged: expected one token id per key, got an array of "
                                   f"shape {raw.shape} and type {raw.dtype}")
            values = torch.from_numpy(raw.astype(np.int64, copy=False))
            if index.ntotal != len(values):
                raise AdapterError(f"{self.path / KEYS} holds {index.ntotal} keys but {self.path / VALUES} "
                                   f"{len(values)} values: one of the two files is damaged")
            dim = self.manifest.get("training", {}).get("dim")
            if isinstance(dim, int) and index.d != dim:
                raise AdapterError(f"{self.path / KEYS} is damaged: keys of dimension {index.d}, the manifest "
                                   f"records {dim}")
            self._store = (index, values)
        return self._store

    def logits_processor(self, llm: Any) -> KNNLMProcessor:
        fp = self.manifest.get("tokenizer_fingerprint")
        if fp and fp != tokenizer_fingerprint(llm.tokenizer):
            raise AdapterError(f"kNN datastore {self.path} was built with {self.manifest.get('base_model')} "
                               f"(tokenizer fingerprint {fp}); LLM {getattr(llm, 'model_id', '?')} has tokenizer "
                               f"fingerprint {tokenizer_fingerprint(llm.tokenizer)}: they do not share a tokenizer")
        if self.manifest.get("base_model") not in (None, getattr(llm, "model_id", None)):
            import warnings

            warnings.warn(f"kNN datastore {self.path} holds hidden states of {self.manifest.get('base_model')}, "
                          f"not of {getattr(llm, 'model_id', '?')}: distances will not mean much", stacklevel=2)
        index, values = self.store()
        p = self.manifest.get("params", {})
        key = self.manifest.get("training", {}).get("key", "lm_head_input")
        return KNNLMProcessor(index, values, llm.model, k=int(p.get("k", 64)),
                              temperature=float(p.get("temperature", 100.0)), lam=float(p.get("lambda", 0.25)),
                              key=key, lambda_bins=p.get("lambda_bins"), lambda_gate=p.get("lambda_gate"))

