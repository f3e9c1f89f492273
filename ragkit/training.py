"""One resumable training loop for every trainer in ragkit, and the one format of its checkpoints.

`train_loop` runs a fixed number of optimizer steps: the learning rate of each parameter group is
its base rate times `schedule(step)`, `step_loss(step)` gives the loss (the trainer picks the batch
from the step, so a resumed run sees the same batches), gradients are clipped, and every
`save_every` steps the whole state goes to the checkpoint folder; a run that finds a checkpoint
there goes on from it, and ends exactly where an uninterrupted run would have.

The checkpoint folder is written as a whole (a temporary sibling folder swapped into place by
`ragkit.fs.atomic_dir`, so a crash mid-save leaves the previous checkpoint) and holds no pickle:

- `state.json`: format and version, the step, the losses so far, the learning-rate schedule's state
  (base rates, last rates), the seeds, the optimizer's parameter groups (hyperparameters and the
  names of their parameters) and non-tensor state, and whatever the trainer adds (`extra`);
- `optimizer.safetensors`: the optimizer's tensors as `{param_name}::{state_key}` (AdamW: `step`,
  `exp_avg`, `exp_avg_sq`);
- `rng.safetensors`: torch's CPU random state (dropout continues as it would have);
- `trainable.safetensors`: the trained parameters by name, unless the trainer writes its model
  itself (`save_model`, e.g. a ColBERT checkpoint whose projection was built at the start).

A folder written by an older ragkit (its optimizer state was `optimizer.pt`, a torch pickle) is
refused with a clear error, never loaded.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ragkit.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
WEIGHTS_FILE = "trainable.safetensors"
LEGACY_FILES = ("optimizer.pt",)  # pickles written by ragkit before this format
FORMAT = "ragkit-train-state"
FORMAT_VERSION = 1
SEP = "::"


def _older(folder: Path) -> CheckpointError:
    return CheckpointError(f"checkpoint from an older ragkit; delete {folder} to restart (its training state is "
                       "in a format this ragkit does not read: the optimizer state was a torch pickle)")


def read_state(folder: str | Path) -> dict | None:
    """The `state.json` of a checkpoint folder, or None when there is no checkpoint to resume.

    A checkpoint written by an older ragkit (`optimizer.pt`, or a state.json of another format) or a
    newer one is a `CheckpointError` naming the folder; nothing of it is loaded."""
    from ragkit.fs import recover

    folder = Path(folder)
    recover(folder)  # finish or undo a swap that a killed save left half done
    if any((folder / name).exists() for name in LEGACY_FILES):
        raise _older(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); delete {folder} to restart") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _older(folder)
    version = state.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} is damaged: format_version must be a whole number from 1, got {version!r}; "
                          f"delete {folder} to restart")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder} holds a training checkpoint from a newer ragkit (format {version}; this one "
                          f"reads {FORMAT_VERSION}): upgrade ragkit, or delete {folder} to restart")
    return state


def has_checkpoint(folder: str | Path) -> bool:
    """True when `folder` holds a checkpoint to resume (an older ragkit's is an error, see `read_state`)."""
    return read_state(folder) is not None


# ---------------------------------------------------------------------------------------------
# optimizer state <-> safetensors + JSON

def _param_names(model: "torch.nn.Module") -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def optimizer_state(optimizer: "torch.optim.Optimizer", names: dict[int, str]) -> tuple[dict, dict]:
    """(tensors, meta) of an optimizer: tensors named `{param_name}::{state_key}`, and a JSON-able
    dict of its parameter groups (hyperparameters + parameter names) and non-tensor state values."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups = []
    for group in optimizer.param_groups:
        g = {}
        for k, v in group.items():
            if k == "params":
                continue
            g[k] = list(v) if isinstance(v, tuple) else v
        try:
            json.dumps(g)
        except TypeError as e:
            raise TypeError(f"optimizer hyperparameters are not JSON: {g}") from e
        g["params"] = [names[id(p)] for p in group["params"]]
        groups.append(g)
        for p in group["params"]:
            for key, v in optimizer.state.get(p, {}).items():
                name = f"{names[id(p)]}{SEP}{key}"
                if torch.is_tensor(v):
                    tensors[name] = v.detach().contiguous()
                elif v is None or isinstance(v, (bool, int, float, str)):
                    scalars.setdefault(names[id(p)], {})[key] = v
                else:
                    raise TypeError(f"optimizer state {name} is a {type(v).__name__}: cannot be saved without pickle")
    return tensors, {"groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: "torch.optim.Optimizer", names: dict[int, str], tensors: dict, meta: dict,
                         folder: Path) -> None:
    """Put the state `optimizer_state` returned (read back from disk) into `optimizer`; a checkpoint
    whose parameters are not this optimizer's is a `CheckpointError`."""
    import torch

    groups = meta.get("groups", [])
    mine = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if [g.get("params") for g in groups] != mine:
        raise CheckpointError(f"the training checkpoint in {folder} does not match this model (other trained "
                          f"parameters or settings); delete {folder} to restart")
    for group, saved in zip(optimizer.param_groups, groups):
        for k, v in saved.items():
            if k != "params":
                group[k] = tuple(v) if isinstance(group.get(k), tuple) and isinstance(v, list) else v
    by_name = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]}
    optimizer.state.clear()
    for key, t in tensors.items():
        name, _, skey = key.rpartition(SEP)
        p = by_name.get(name)
        if p is None:
            raise CheckpointError(f"{folder / OPTIMIZER_FILE} holds state for {name!r}, which this model does not "
                              f"train; delete {folder} to restart")
        if skey != "step" and torch.is_floating_point(t):
            t = t.to(device=p.device, dtype=p.dtype)
        optimizer.state[p][skey] = t
    for name, values in meta.get("scalars", {}).items():
        if name in by_name:
            optimizer.state[by_name[name]].update(values)


def save_checkpoint(folder: str | Path, model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", step: int,
                    losses: list[float], scheduler: dict, seeds: dict | None = None, extra: dict | None = None,
                    save_model: Callable[[Path], None] | None = None) -> None:
    """Write the whole training state to `folder` atomically (see the module docstring)."""
    import torch
    from safetensors.torch import save_file

    from ragkit.fs import atomic_dir

    names = _param_names(model)
    tensors, meta = optimizer_state(optimizer, names)
    with atomic_dir(folder) as tmp:
        if save_model is not None:
            save_model(tmp)
        else:
            trained = {names[id(p)]: p.detach().contiguous() for g in optimizer.param_groups for p in g["params"]}
            save_file(trained, str(tmp / WEIGHTS_FILE))
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        save_file({"torch": torch.get_rng_state()}, str(tmp / RNG_FILE))
        state = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "losses": losses,
                 "scheduler": scheduler, "seeds": seeds or {}, "optimizer": meta, **(extra or {})}
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


def load_checkpoint(folder: str | Path, model: "torch.nn.Module", optimizer: "torch.optim.Optimizer",
                    weights: bool = True) -> dict:
    """Restore a checkpoint `save_checkpoint` wrote: the trained parameters (unless `weights` is False:
    the trainer loaded its model from the folder itself), the optimizer state and torch's random
    state. Returns the state.json dict."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    state = read_state(folder)
    if state is None:
        raise CheckpointError(f"no training checkpoint in {folder}")
    names = _param_names(model)

    def read(name: str) -> dict:
        try:
            return load_file(str(folder / name))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{folder / name} is missing or damaged ({e}); delete {folder} to restart") from e

    if weights:
        saved = read(WEIGHTS_FILE)
        with torch.no_grad():
            for g in optimizer.param_groups:
                for p in g["params"]:
                    n = names[id(p)]
                    if n not in saved or saved[n].shape != p.shape:
                        raise CheckpointError(f"{folder / WEIGHTS_FILE} has no tensor {n!r} of shape {tuple(p.shape)}; "
                                          f"delete {folder} to restart")
                    p.copy_(saved[n])
    load_optimizer_state(optimizer, names, read(OPTIMIZER_FILE), state.get("optimizer", {}), folder)
    torch.set_rng_state(read(RNG_FILE)["torch"])
    return state


# ---------------------------------------------------------------------------------------------
# the loop

def train_loop(model: "torch.nn.Module", optimizer: "torch.optim.Optimizer", steps: int,
               step_loss: Callable[[int], "torch.Tensor"], checkpoint: str | Path, *,
               schedule: Callable[[int], float] = lambda step: 1.0, save_every: int = 0,
               save_model: Callable[[Path], None] | None = None, seeds: dict | None = None,
               extra: dict | None = None, clip: float | None = 1.0, threads: int | None = None,
               desc: str = "training", progress: bool | None = None, loss_digits: int = 4,
               on_step: Callable[[int, list[float], float], None] | None = None) -> dict:
    """Train `model` for `steps` optimizer steps, resuming from `checkpoint` when it holds a state.

    Step `s` (from 0): every group's lr = its base lr * `schedule(s)`; `loss = step_loss(s)`;
    backward; gradient norm clipped to `clip` over the optimizer's parameters; optimizer step. After
    every `save_every`-th step (but the last; 0: never) the state is saved (`save_checkpoint`), with
    `save_model(folder)` writing the model when given (the caller then loads it from there on
    resume) or else the trained parameters. `on_step(done, losses, seconds)` runs after each step.
    Runs on `threads` torch threads (restored after). Returns steps, resumed_from_step, losses,
    seconds (of this run, unrounded) and threads (the count it ran on)."""
    import torch

    from ragkit.progress import progress_bar
    from ragkit.runtime import torch_threads

    checkpoint = Path(checkpoint)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start, losses = 0, []
    state = read_state(checkpoint)
    if state is not None:
        state = load_checkpoint(checkpoint, model, optimizer, weights=save_model is None)
        start, losses = int(state["step"]), [float(x) for x in state["losses"]]
        base_lrs = [float(x) for x in state["scheduler"]["base_lrs"]]
        if len(base_lrs) != len(optimizer.param_groups):
            raise CheckpointError(f"the training checkpoint in {checkpoint} does not match this optimizer; "
                              f"delete {checkpoint} to restart")

    def save(done: int) -> None:
        sched = {"base_lrs": base_lrs, "last_lrs": [g["lr"] for g in optimizer.param_groups], "step": done}
        save_checkpoint(checkpoint, model, optimizer, done, losses, sched, seeds, extra, save_model)

    with torch_threads(threads):
        t0 = time.perf_counter()
        model.train()
        try:
            with progress_bar(desc, steps, progress) as advance:
                advance(start)
                for step in range(start, steps):
                    factor = schedule(step)
                    for group, lr in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = lr * factor
                    loss = step_loss(step)
                    loss.backward()
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(trained, clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(round(float(loss.detach()), loss_digits))
                    advance(1)
                    if on_step is not None:
                        on_step(step + 1, losses, time.perf_counter() - t0)
                    if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
                        save(step + 1)
        finally:
            model.eval()
        used = torch.get_num_threads()
    return {"steps": steps, "resumed_from_step": start, "losses": losses,
            "seconds": time.perf_counter() - t0, "threads": used}
