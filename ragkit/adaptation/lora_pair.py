"""An expert that is a LoRA on its anti-expert's own weights, run with it as one batch of two.

Proxy-tuning needs the expert's and the anti-expert's next-token logits at every step. When the
expert is a LoRA adapter over the anti-expert (the usual recipe: tune the small model on the domain,
keep the untuned one as the anti-expert), both are the same base weights plus, for the expert, a
low-rank delta on some linear layers. `install_row_lora` wraps those layers so that the delta is
added to the first `rows` rows of a batch only: one forward of a batch of two (row 0 the expert,
row 1 the anti-expert, the same tokens) reads the base weights once per step instead of twice.

The base layers are left as they are (float32, bfloat16 or ragkit's int8 decode layer); the delta
is computed in float32 from the adapter's own A and B, so the expert is the LoRA applied exactly,
not merged into (and rounded with) quantised weights. Only plain linear LoRA is paired: an
adapter with DoRA, embedding LoRA or `modules_to_save` raises `AdapterError`, and the caller runs
the two models separately.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragkit.errors import AdapterError

PEFT_PREFIX = "base_model.model."


@dataclass
class RowLoRAState:
    """Shared by every wrapped layer of one model: the LoRA applies to the first `rows` rows of a
    batch (None: to none; the model is then its plain base)."""
    rows: int | None = None


class RowLoRALinear(torch.nn.Module):
    """`base(x)`, plus `scale·B·A·x` on the first `state.rows` rows of the batch."""

    def __init__(self, base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, scale: float, state: RowLoRAState):
        super().__init__()
        self.base, self.state, self.scale = base, state, float(scale)
        self.register_buffer("lora_a", a.float().contiguous())  # [r, in]
        self.register_buffer("lora_b", b.float().contiguous())  # [out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        n = self.state.rows
        if not n:
            return y
        delta = (x[:n].float() @ self.lora_a.T) @ self.lora_b.T * self.scale
        if torch.is_grad_enabled() and y.requires_grad:
            return torch.cat([y[:n] + delta.to(y.dtype), y[n:]])
        y[:n] += delta.to(y.dtype)  # inference (the decode path): in place, no copy of the batch
        return y


def lora_folder(ref: str | Path) -> Path | None:
    """The folder holding `adapter_config.json` + `adapter_model.safetensors` for a LoRA reference (a
    ragkit `lora` adapter folder or a bare peft folder, as the loader finds it); None when `ref` is not one."""
    from ragkit.generation.loader import _model_dir

    d = _model_dir(Path(ref)) if Path(ref).is_dir() else None
    ok = d is not None and (d / "adapter_config.json").is_file() and (d / "adapter_model.safetensors").is_file()
    return d if ok else None


def lora_base_id(ref: str | Path, folder: Path) -> str:
    """The canonical id of the model the LoRA at `ref` (its weights in `folder`) was trained on,
    comparable with `loader.base_model_id` of a model reference."""
    from ragkit.generation.loader import _lora_base, base_model_id, is_model_adapter

    base = base_model_id(ref) if is_model_adapter(ref) else _lora_base(Path(ref), folder)
    return base_model_id(base)


def read_lora(folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """({module path: (A [r, in], B [out, r])}, scale) of a peft LoRA folder; `AdapterError` for a
    LoRA this pairing does not apply exactly (DoRA, embedding LoRA, modules_to_save, per-module ranks)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("use_dora") or cfg.get("modules_to_save") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"{folder}: a LoRA with DoRA, modules_to_save or per-module ranks cannot be paired")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    weights = load_file(str(folder / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key and key.endswith("weight"):
                module = key.split(marker)[0].removeprefix(PEFT_PREFIX)
                pairs.setdefault(module, {})[part] = tensor
                break
        else:
            raise AdapterError(f"{folder}: tensor {key!r} is not a linear LoRA A/B weight: this LoRA cannot be paired")
    incomplete = [m for m, ab in pairs.items() if len(ab) != 2]
    if incomplete or not pairs:
        raise AdapterError(f"{folder}: LoRA weights incomplete for {incomplete or 'every module'}")
    return {m: (ab["lora_A"], ab["lora_B"]) for m, ab in pairs.items()}, scale


def install_row_lora(model: Any, folder: str | Path) -> RowLoRAState:
    """Wrap the layers of `model` that the LoRA in `folder` targets (in place); returns the state
    that switches the delta on for the first rows of a batch. `model` must be the LoRA's base."""
    folder = Path(folder)
    lora, scale = read_lora(folder)
    state = RowLoRAState()
    for name, (a, b) in lora.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError as e:
            raise AdapterError(f"{folder}: the LoRA targets {name!r}, which the base model has not") from e
        out_f, in_f = getattr(layer, "out_features", None), getattr(layer, "in_features", None)
        if (out_f, in_f) != (b.shape[0], a.shape[1]):
            raise AdapterError(f"{folder}: LoRA shapes for {name!r} ({b.shape[0]}x{a.shape[1]}) do not match the base "
                               f"layer ({out_f}x{in_f}): not a LoRA of this model")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RowLoRALinear(layer, a, b, scale, state))
    return state
