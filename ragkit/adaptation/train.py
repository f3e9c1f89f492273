"""Training domain models: LoRA / full fine-tuning of a causal LM, and `distill` (a layer-dropped copy
of an LLM healed by distillation from the LLM's logits) - the small sibling that shares the LLM's
tokenizer, used as the expert / anti-expert pair of proxy-tuning and as the small model of
product-of-experts and contrastive decoding.

All loops are plain torch: fixed step counts over contiguous token blocks of the text (an epoch
is a seeded permutation of the blocks, so a resumed run sees the same batches), AdamW with a
linear warm-up and linear decay, a progress bar, `threads` torch threads, all through the one loop
of `ragkit.training`. Every `save_every` steps the trainable weights and the optimizer state
(safetensors) and the step, losses and seeds (JSON) go to `<out>/checkpoint/`; a run that finds a
checkpoint there goes on from it. The finished adapter replaces the folder atomically (manifest +
`save_pretrained(safe_serialization=True)` weights + tokenizer).

General text for healing (`general_text`): what ships in every environment and is not the domain -
the long descriptions of installed packages (`*.dist-info/METADATA`) and their license files.
Paragraphs sharing a word 8-gram with any `exclude` text (the held-out slices) are dropped.
Embeddings (tied with lm_head in SmolLM2) are frozen by default in `distill` and in fine-tunes
of a distilled model: all the small models then keep the LLM's exact output matrix, which keeps
them close to the LLM and lets proxy-tuning score both small models with one matrix product.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ragkit.data.splits import word_ngrams
from ragkit.generation.loader import base_model_id, is_model_adapter, load_causal_lm, peft_model
from ragkit.adaptation.base import AdapterError, LogitsAdapter, new_manifest, read_adapter_manifest, write_adapter

CHECKPOINT = "checkpoint"


# ---------------------------------------------------------------------------------------------
# text

def token_blocks(tokenizer: Any, text: str, block: int):
    """Contiguous, non-overlapping blocks of `block` token ids (LongTensor [n, block])."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // block
    if n == 0:
        raise AdapterError(f"the training text has {len(ids)} tokens: fewer than one block of {block}")
    return torch.tensor(ids[:n * block], dtype=torch.long).view(n, block)


def general_text(max_chars: int = 600_000, exclude: Sequence[str] = (), min_paragraph: int = 200) -> tuple[str, dict]:
    """Generic English/technical text from installed packages' metadata descriptions and license
    files (site-packages), minus paragraphs that share a word 8-gram with any `exclude` text.
    Returns (text, report)."""
    import site
    import sysconfig

    roots = {Path(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()}
    files: list[Path] = []
    for root in sorted(roots):
        for d in sorted(root.glob("*.dist-info")):
            files += [d / "METADATA"] + sorted(x for x in d.rglob("*") if x.is_file() and "LICEN" in x.name.upper())
    banned = set().union(*(word_ngrams(t) for t in exclude)) if exclude else set()
    seen, out, size, dropped = set(), [], 0, 0
    for f in files:
        try:
            raw = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if f.name == "METADATA":  # the long description follows the headers' blank line
            raw = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
        for para in re.split(r"\n\s*\n", raw):
            para = para.strip()
            if len(para) < min_paragraph or para in seen:
                continue
            seen.add(para)
            if banned and word_ngrams(para) & banned:
                dropped += 1
                continue
            out.append(para)
            size += len(para) + 2
            if size >= max_chars:
                break
        if size >= max_chars:
            break
    text = "\n\n".join(out)
    return text, {"source": "site-packages *.dist-info METADATA descriptions and license files",
                  "files_scanned": len(files), "paragraphs": len(out), "chars": len(text),
                  "paragraphs_dropped_for_overlap": dropped}


def read_corpus(corpus: str | Path) -> str:
    """A training text: a .txt file, `general` (see `general_text`), or a folder's train.txt."""
    if str(corpus) == "general":
        return general_text()[0]
    p = Path(corpus)
    if p.is_dir() and (p / "train.txt").is_file():
        p = p / "train.txt"
    if not p.is_file():
        raise AdapterError(f"no training text at {corpus} (give a .txt file, a folder with train.txt, or 'general')")
    return p.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the loop

def _train_loop(model, blocks, steps: int, batch: int, lr: float, loss_fn: Callable, ckpt: Path,
                threads: int | None, seed: int, desc: str, save_every: int, warmup: int = 10,
                progress: bool | None = None, log_every: int = 0) -> dict:
    """AdamW over the model's trainable parameters with a linear warm-up and decay, through
    `ragkit.training.train_loop` (checkpoint: the trainable weights, the optimizer state and the
    step, as safetensors + JSON, in `ckpt`)."""
    import torch

    from ragkit.training import read_state, train_loop

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    saved = read_state(ckpt)  # a resumed run keeps the batch order it started with
    order_seed = int(saved["seeds"].get("batch_order", seed)) if saved else seed
    n = blocks.shape[0]
    per_epoch = max(1, n // batch)

    def batch_at(step: int):
        epoch, i = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(order_seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        return blocks[perm[i * batch:(i + 1) * batch]]

    def log(done: int, losses: list[float], secs: float) -> None:
        if log_every and (done % log_every == 0 or done == steps):
            print(f"{desc}: step {done}/{steps} loss {losses[-1]:.4f} ({secs:.0f} s)", file=sys.stderr, flush=True)

    r = train_loop(model, opt, steps, lambda step: loss_fn(batch_at(step)), ckpt,
                   schedule=lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / max(1, steps)),
                   save_every=save_every, seeds={"batch_order": order_seed}, threads=threads, desc=desc,
                   progress=progress, loss_digits=4, on_step=log)
    losses, start, secs = r["losses"], r["resumed_from_step"], r["seconds"]
    done = steps - start
    return {"steps": steps, "resumed_from_step": start, "seconds": round(secs, 1),
            "tokens_per_s": round(done * batch * blocks.shape[1] / max(secs, 1e-9), 1),
            "loss_first": losses[0] if losses else None,
            "loss_last_10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4) if losses else None}


def _save_model_adapter(out: Path, manifest: dict, save: Callable[[Path], None], tokenizer) -> Path:
    def files(tmp: Path) -> None:
        save(tmp)
        tokenizer.save_pretrained(tmp)
    return write_adapter(out, manifest, files)


def finetune(base: str | Path, text: str, out: str | Path, kind: str = "lora", steps: int = 200, block: int = 256,
             batch: int = 4, lr: float | None = None, lora_r: int = 16, lora_alpha: int = 32,
             train_embeddings: bool | None = None, threads: int | None = 2, seed: int = 0, save_every: int = 50,
             progress: bool | None = None, corpus_name: str = "", log_every: int = 0) -> Path:
    """LoRA (`kind="lora"`, peft, attention and MLP projections) or full fine-tuning of a causal LM
    on `text` with the next-token loss; writes a `lora` / `full` adapter folder."""
    import torch

    if kind not in ("lora", "full"):
        raise AdapterError(f"finetune kind must be lora or full, not {kind!r}")
    if kind == "lora":  # checked before the model loads
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise AdapterError("LoRA training needs peft: pip install 'ragkit[adapters]'") from e
    out = Path(out)
    torch.manual_seed(seed)
    model, tok, name = load_causal_lm(base)
    blocks = token_blocks(tok, text, block)
    from_distilled = is_model_adapter(base) and read_adapter_manifest(base)["kind"] == "distill"
    if train_embeddings is None:
        train_embeddings = not from_distilled
    if kind == "lora":
        from peft import LoraConfig

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        model = peft_model(model, cfg)
        lr = lr or 2e-4
    else:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(train_embeddings)
        for p in model.get_output_embeddings().parameters():
            p.requires_grad_(train_embeddings)
        lr = lr or 5e-5

    def loss_fn(x):
        return model(input_ids=x, labels=x).loss

    stats = _train_loop(model, blocks, steps, batch, lr, loss_fn, out / CHECKPOINT, threads, seed,
                        f"{kind} {out.name}", save_every, progress=progress, log_every=log_every)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    manifest = new_manifest(kind, base_model_id(base), tok, [text],
                            training={"kind": kind, "init": str(base), "corpus": corpus_name, "block": block,
                                      "batch": batch, "lr": lr, "seed": seed, "trainable_params": trainable,
                                      "train_tokens": int(blocks.numel()), "threads": threads,
                                      **({"lora_r": lora_r, "lora_alpha": lora_alpha} if kind == "lora" else
                                         {"train_embeddings": train_embeddings}), **stats})
    if kind == "lora":
        manifest["base_model"] = str(base)  # what load_causal_lm merges the LoRA weights into
    else:
        manifest["init"] = str(base)
    return _save_model_adapter(out, manifest, lambda d: model.save_pretrained(d, safe_serialization=True), tok)


def select_layers(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over `n_layers`, first and last included."""
    if keep >= n_layers:
        return list(range(n_layers))
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def layer_dropped_copy(model, layers: Sequence[int]):
    """A deep copy of a decoder-only model keeping only `layers` (in order)."""
    import copy

    import torch

    small = copy.deepcopy(model)
    body = small.get_decoder() if hasattr(small, "get_decoder") else small.model
    body.layers = torch.nn.ModuleList([body.layers[i] for i in layers])
    for new, layer in enumerate(body.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new
    small.config.num_hidden_layers = len(layers)
    if getattr(small.config, "layer_types", None):
        small.config.layer_types = [small.config.layer_types[i] for i in layers]
    return small


def distill(teacher: str | Path, text: str, out: str | Path, layers: int | Sequence[int] = 6,
            init: str | Path | None = None, steps: int = 300, block: int = 256, batch: int = 4, lr: float = 3e-4,
            temperature: float = 1.0, train_embeddings: bool = False, threads: int | None = 2, seed: int = 0,
            save_every: int = 50, progress: bool | None = None, corpus_name: str = "", log_every: int = 0) -> Path:
    """A small sibling of `teacher`: a layer-dropped copy (or `init`, an existing distilled model to
    go on from) trained to match the teacher's next-token distribution (KL over the full vocabulary,
    at `temperature`) on `text`. Writes a `distill` adapter folder."""
    import torch
    import torch.nn.functional as F

    out = Path(out)
    torch.manual_seed(seed)
    big, tok, name = load_causal_lm(teacher)
    for p in big.parameters():
        p.requires_grad_(False)
    if init is not None:
        small, tok2, _ = load_causal_lm(init)
        from ragkit.adaptation.base import check_same_tokenizer

        check_same_tokenizer(tok, tok2, str(teacher), str(init))
        kept = read_adapter_manifest(init).get("training", {}).get("layers") if is_model_adapter(init) else None
    else:
        n = big.config.num_hidden_layers
        kept = select_layers(n, layers) if isinstance(layers, int) else list(layers)
        small = layer_dropped_copy(big, kept)
    for p in small.parameters():
        p.requires_grad_(True)
    if not train_embeddings:
        for p in small.get_input_embeddings().parameters():
            p.requires_grad_(False)
        for p in small.get_output_embeddings().parameters():
            p.requires_grad_(False)
    blocks = token_blocks(tok, text, block)
    vocab = min(big.config.vocab_size, small.config.vocab_size)

    def loss_fn(x):
        with torch.no_grad():
            t = F.log_softmax(big(input_ids=x).logits[..., :vocab].float() / temperature, dim=-1)
        s = F.log_softmax(small(input_ids=x).logits[..., :vocab].float() / temperature, dim=-1)
        return F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean") * temperature ** 2

    stats = _train_loop(small, blocks, steps, batch, lr, loss_fn, out / CHECKPOINT, threads, seed,
                        f"distill {out.name}", save_every, progress=progress, log_every=log_every)
    manifest = new_manifest("distill", base_model_id(teacher), tok, [text],
                            training={"kind": "distill", "teacher": str(teacher), "init": str(init) if init else None,
                                      "layers": kept, "of_layers": big.config.num_hidden_layers,
                                      "corpus": corpus_name, "block": block, "batch": batch, "lr": lr,
                                      "temperature": temperature, "loss": "KL(teacher || student), full vocabulary",
                                      "train_embeddings": train_embeddings, "seed": seed,
                                      "train_tokens": int(blocks.numel()), "threads": threads, **stats})
    return _save_model_adapter(out, manifest, lambda d: small.save_pretrained(d, safe_serialization=True), tok)


def _no_corpus(corpus: str | Path | None) -> bool:
    return corpus is None or str(corpus) in ("", "-")


def train_adapter(kind: str, corpus: str | Path | None, out: str | Path, base: str | Path = "smollm2", *,
                  steps: int = 200, block: int = 256, batch: int = 4, lr: float | None = None, lora_r: int = 16,
                  layers: int = 6, init: str | Path | None = None, exclude: Sequence[str | Path] = (),
                  general_chars: int = 600_000, k: int = 64, temperature: float = 100.0, lam: float = 0.25,
                  ivf: bool = False, key: str = "lm_head_input", max_tokens: int | None = None, window: int = 512,
                  expert: str | None = None, anti_expert: str | None = None, small: str | None = None,
                  threads: int | None = 2, seed: int = 0, save_every: int = 50, progress: bool | None = None,
                  log_every: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """Train (or assemble) an adapter of `kind` into folder `out` and return its path; what
    `ragkit adapter train` runs.

    - `lora` / `full`: fine-tune `base` on `corpus`; `distill`: a `layers`-layer sibling of `base`
      (or `init`, a distilled model to go on from) healed on `corpus`; `knn`: a kNN-LM datastore of
      `base` over `corpus` (`k`, `temperature`, `lam`, `ivf`, `key`, `max_tokens`, `window`).
    - `proxy` (`expert`, `anti_expert`), `poe` (`small`), `contrastive` (`small`, the amateur):
      adapters that reference trained models; no corpus (None or "-").
    - `knowledge`: black-box; wraps `base` as the SM. With a corpus, `base` is first LoRA-tuned on it
      into the folder `<out>-sm`.

    `corpus`: a .txt file, a folder with train.txt, or "general" (installed packages' descriptions
    and licenses, `general_chars` characters, minus paragraphs sharing a word 8-gram with the text
    files in `exclude`). Training is resumable (`save_every`), on `threads` torch threads; `log`
    receives one-line notes (the general-text report)."""
    from ragkit.adaptation.kinds import KINDS

    if kind not in KINDS:
        raise AdapterError(f"unknown adapter kind {kind!r}; known kinds: {', '.join(KINDS)}")
    out = Path(out)
    if kind == "knowledge":  # black-box: wrap an SM; with a corpus, LoRA-tune `base` on it first (OUT-sm)
        from ragkit.adaptation.knowledge import make_knowledge_adapter

        sm = base
        if not _no_corpus(corpus):
            sm = finetune(base, read_corpus(corpus), Path(f"{out}-sm"), kind="lora", steps=steps, block=block,
                          batch=batch, lr=lr, lora_r=lora_r, lora_alpha=2 * lora_r, threads=threads, seed=seed,
                          save_every=save_every, progress=progress, corpus_name=str(corpus), log_every=log_every)
        return make_knowledge_adapter(out, str(sm))
    if kind in ("proxy", "poe", "contrastive"):
        from ragkit.adaptation.logits import create

        models = {"proxy": {"expert": expert, "anti_expert": anti_expert}, "poe": {"small": small},
                  "contrastive": {"amateur": small}}[kind]
        return create(kind, out, {r: str(m) for r, m in models.items() if m}, str(base))
    if kind not in ("lora", "full", "distill", "knn"):
        raise AdapterError(f"train_adapter does not build {kind!r} adapters")
    if _no_corpus(corpus):
        raise AdapterError(f"a {kind} adapter is trained on a text: give a corpus (a .txt file, a folder with "
                           "train.txt, or 'general')")
    if str(corpus) == "general":
        texts = []
        for e in exclude:
            if not Path(e).is_file():
                raise AdapterError(f"exclude: no text file at {e}")
            texts.append(Path(e).read_text(encoding="utf-8"))
        text, report = general_text(general_chars, texts)
        if log is not None:
            log(f"general text: {report}")
    else:
        text = read_corpus(corpus)
    if kind in ("lora", "full"):
        return finetune(base, text, out, kind=kind, steps=steps, block=block, batch=batch, lr=lr, lora_r=lora_r,
                        lora_alpha=2 * lora_r, threads=threads, seed=seed, save_every=save_every, progress=progress,
                        corpus_name=str(corpus), log_every=log_every)
    if kind == "distill":
        return distill(base, text, out, layers=layers, init=init, steps=steps, block=block, batch=batch,
                       lr=lr or 3e-4, threads=threads, seed=seed, save_every=save_every, progress=progress,
                       corpus_name=str(corpus), log_every=log_every)
    from ragkit.adaptation.knn import build_datastore  # kind == "knn"

    return build_datastore(str(base), text, out, k=k, temperature=temperature, lam=lam, ivf=ivf, window=window,
                           stride=max(1, window - 128), threads=threads, corpus_name=str(corpus),
                           max_tokens=max_tokens, key=key)


class ModelAdapter(LogitsAdapter):
    """A trained model folder (lora / full / distill): not a decode-time processor by itself; it is
    the expert / anti-expert / small model that `proxy`, `poe` and `contrastive` adapters use, and
    the LoRA-tuned reference of `ragkit adapter eval`."""

    def logits_processor(self, llm: Any) -> Any:
        raise AdapterError(f"{self.path} is a {self.kind} model, not a decode-time adapter: build a proxy / poe / "
                           f"contrastive adapter over it (ragkit adapter train ... --kind proxy)")

