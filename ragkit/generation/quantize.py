"""Weight formats for local causal LMs on CPU: `float32`, `bfloat16`, `int8`, and `auto` (per size).

`int8` keeps each linear layer's weights for the prompt's forward pass in bfloat16 where the CPU
multiplies bf16 natively (many rows: bf16 matrix products on AVX-512 BF16 were 6.6x faster than fp32
for a 256-token prompt), in float32 where it does not (an AVX2 CPU emulates bf16: 3.4x slower than
fp32 for 64 rows; `ragkit.runtime.native_bf16`), and adds a per-output-channel int8 copy for decode
steps (a few rows: the step reads half the bytes; `torch.ops.aten._weight_int8pack_mm` took a 1536x8960 layer from 1.87 ms in bf16 to 0.77 ms
on one thread; it grows with the rows, so only passes of up to `DECODE_MAX_ROWS` rows use it). Torch's dynamic quantisation (`torch.ao.quantization.quantize_dynamic`) is deprecated
and its quantized tensors with it, so ragkit does not use it; `bench/qwen_speed.py` measures it as
the peer. `auto` picks by parameter count from the table that bench measured (see `AUTO_DTYPE`).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator

DTYPES = ("auto", "float32", "bfloat16", "int8")
# `auto`: float32 below this many parameters (small models are overhead-bound, and the packaged
# adapters were trained in float32), the int8 decode format from there on (bench/results/qwen_speed.json).
AUTO_FLOAT32_BELOW = 300_000_000
# At most this many rows use the int8 copy: `_weight_int8pack_mm` grows with the rows (1536x8960, one
# thread: 0.83 ms for 1 row, 1.35 for 4, 2.50 for 7) while bf16 stays flat (1.8 ms), so batched steps
# of 5+ rows run in bf16. Speculative checks raise it for their pass (`int8_rows`) to stay exact.
DECODE_MAX_ROWS = 4


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        from ragkit.errors import ModelLoadError

        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def resolve_dtype(dtype: str, n_params: int | None) -> str:
    """The concrete format for `dtype` (`auto` by parameter count; unknown count: float32)."""
    check_dtype(dtype)
    if dtype != "auto":
        return dtype
    return "int8" if n_params is not None and n_params >= AUTO_FLOAT32_BELOW else "float32"


def load_dtype(dtype: str) -> Any:
    """The torch dtype a model in format `dtype` is loaded in (int8 starts from the many-row dtype:
    bfloat16 on CPUs with native bf16, else float32)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": prompt_dtype()}[dtype]


def prompt_dtype() -> Any:
    """The dtype of the int8 format's many-row (prompt) weights: bfloat16 where the CPU multiplies it
    natively, else float32."""
    import torch

    from ragkit.runtime import native_bf16

    return torch.bfloat16 if native_bf16() else torch.float32


@functools.cache
def _int8_linear_class():
    """The int8-decode linear layer class (made on first use, so importing this module needs no torch)."""
    import torch
    import torch.nn.functional as F

    class Int8DecodeLinear(torch.nn.Module):
        """A linear layer with bf16 (or, without native bf16, float32) weights for many rows and an
        int8 copy for at most `max_rows`."""

        def __init__(self, linear: torch.nn.Linear, max_rows: int = DECODE_MAX_ROWS):
            super().__init__()
            w = linear.weight.detach()
            dtype = prompt_dtype()
            self.in_features, self.out_features, self.max_rows = linear.in_features, linear.out_features, max_rows
            self.weight = torch.nn.Parameter(w.to(dtype), requires_grad=False)
            self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
            wf = w.float()
            scales = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.register_buffer("qweight", torch.round(wf / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
            self.register_buffer("scales", scales.to(torch.bfloat16))

        def forward(self, x):
            rows = x.numel() // self.in_features
            if rows > self.max_rows:
                return F.linear(x.to(self.weight.dtype), self.weight, self.bias)
            # bf16 activations on every CPU: with float32 ones this kernel was 7x slower on AVX2
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, self.in_features).to(torch.bfloat16), self.qweight, self.scales)
            y = y.reshape(*x.shape[:-1], self.out_features).to(self.weight.dtype)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8 up to {self.max_rows} rows"

    return Int8DecodeLinear


def quantize_int8(model: Any, max_rows: int = DECODE_MAX_ROWS) -> Any:
    """Replace every `nn.Linear` of `model` (the output head included) by its int8-decode form, in
    place; returns the model. Embeddings and norms stay in the model's dtype."""
    import torch

    cls = _int8_linear_class()
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(mod, max_rows))
    return model


@contextmanager
def int8_rows(model: Any, rows: int) -> Iterator[None]:
    """Passes of up to `rows` rows use the int8 copies of `model`'s int8 layers within the block
    (its per-row results equal one-row steps bit for bit); a no-op for other formats."""
    layers = [m for m in model.modules() if isinstance(m, _int8_linear_class())]
    before = [m.max_rows for m in layers]
    for m in layers:
        m.max_rows = max(m.max_rows, rows)
    try:
        yield
    finally:
        for m, n in zip(layers, before):
            m.max_rows = n
