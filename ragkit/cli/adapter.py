"""`ragkit adapter ...`: train, fit, evaluate and inspect white-box domain adapters (a thin layer
over `ragkit.adaptation.{train,knn,logits,fit,evaluate,domain}`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ragkit.cli.console import _fail, err, out
from ragkit.errors import RagkitError

adapter_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="Domain adapters: train (lora, full, distill, knn, proxy, poe, contrastive), fit, eval, info.")


def _read(path: Path, what: str) -> str:
    if not path.is_file():
        raise RagkitError(f"{what}: no text file at {path}")
    return path.read_text(encoding="utf-8")


@adapter_app.command()
def train(
    corpus: str = typer.Argument(..., help="Training text: a .txt file, a folder with train.txt, or 'general' "
                                           "(installed packages' descriptions and licenses; see --exclude). "
                                           "'-' for proxy / poe / contrastive (they only reference models)."),
    kind: str = typer.Option(..., "--kind", help="lora, full, distill, knn, proxy, poe, contrastive or knowledge "
                                                 "(black-box: wraps --base as the SM; with a corpus, LoRA-tunes it into OUT-sm first)."),
    base: str = typer.Option("smollm2", "--base", help="Model to train from / the LLM (name, hub id, folder, or a "
                                                       "trained model adapter for full / distill --init)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Adapter folder to write (e.g. adapters/NAME)."),
    steps: int = typer.Option(200, help="lora / full / distill: optimizer steps (fixed; resumable)."),
    block: int = typer.Option(256, help="Tokens per training sequence."),
    batch: int = typer.Option(4, help="Sequences per step."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default lora 2e-4, full 5e-5, distill 3e-4)."),
    lora_r: int = typer.Option(16, help="LoRA rank."),
    layers: int = typer.Option(6, help="distill: layers kept (spread evenly, first and last included)."),
    init: Optional[str] = typer.Option(None, help="distill: go on from this distilled model instead of a new copy."),
    exclude: Optional[list[str]] = typer.Option(None, help="With 'general': text files whose word 8-grams must "
                                                           "not occur in the training text (held-out slices)."),
    general_chars: int = typer.Option(600_000, help="With 'general': characters of general text."),
    k: int = typer.Option(64, help="knn: neighbours."),
    temperature: float = typer.Option(100.0, help="knn: softmax temperature on squared L2 distances."),
    lam: float = typer.Option(0.25, "--lambda", help="knn: interpolation weight (fit it with `ragkit adapter fit`)."),
    ivf: bool = typer.Option(False, help="knn: IVF index (approximate) instead of exact flat L2."),
    key: str = typer.Option("lm_head_input", help="knn: the hidden state used as key: lm_head_input (the final "
                                                  "hidden state) or ffn_input (the input of the last layer's "
                                                  "feed-forward block)."),
    max_tokens: Optional[int] = typer.Option(None, help="knn: use only the first N tokens of the text."),
    window: int = typer.Option(512, help="knn: tokens per forward window (stride: window - 128 for context)."),
    expert: Optional[str] = typer.Option(None, help="proxy: the domain-tuned small model."),
    anti_expert: Optional[str] = typer.Option(None, help="proxy: the small model before domain tuning."),
    small: Optional[str] = typer.Option(None, help="poe / contrastive: the small (domain or amateur) model."),
    threads: int = typer.Option(2, help="torch threads for training / the datastore build."),
    seed: int = typer.Option(0, help="Random seed (batch order, initialisation)."),
    log_every: int = typer.Option(0, help="Print the loss every N steps (besides the progress bar)."),
) -> None:
    """Train an adapter: a LoRA / full fine-tune, a distilled small sibling, a kNN-LM datastore, or a
    proxy / poe / contrastive adapter that references trained models."""
    try:
        from ragkit.adaptation.train import train_adapter

        path = train_adapter(kind, corpus, out_dir, base, steps=steps, block=block, batch=batch, lr=lr,
                             lora_r=lora_r, layers=layers, init=init, exclude=exclude or [],
                             general_chars=general_chars, k=k, temperature=temperature, lam=lam, ivf=ivf, key=key,
                             max_tokens=max_tokens, window=window, expert=expert, anti_expert=anti_expert,
                             small=small, threads=threads, seed=seed, log_every=log_every, log=err.print)
        _print_info(path)
    except (RagkitError, ValueError, OSError) as e:
        _fail(e)


def _base_model(adapter: str) -> str:
    """The LLM an adapter was made for: its manifest's base_model."""
    from ragkit.adaptation.base import read_adapter_manifest
    from ragkit.refs import resolve_adapter

    return read_adapter_manifest(resolve_adapter(adapter))["base_model"]


@adapter_app.command()
def fit(
    adapter: str = typer.Argument(..., help="Adapter folder or name (proxy, poe, contrastive, knn)."),
    text: Path = typer.Option(..., "--text", help="Validation text (never the test text)."),
    llm: Optional[str] = typer.Option(None, help="The LLM the adapter is for (default: the base model its manifest names)."),
    stack_on: Optional[list[str]] = typer.Option(None, help="Fit for use after these adapters (repeatable); "
                                                            "writes params_stacked instead of params."),
    max_tokens: Optional[int] = typer.Option(None, help="Use only the first N tokens of the text."),
    window: int = typer.Option(512, help="Scoring window (tokens)."),
    stride: int = typer.Option(256, help="New tokens scored per window."),
    threads: int = typer.Option(1, help="torch threads (1: on shared cores two OpenMP threads were much slower)."),
) -> None:
    """Pick the adapter's weight (alpha / w / beta / lambda, kNN temperature) on a validation text by
    perplexity over a grid that includes 0; writes it into the manifest."""
    try:
        from ragkit.adaptation.fit import fit as run_fit

        r = run_fit(adapter, _read(text, "--text"), llm=llm or _base_model(adapter), stack_on=stack_on or [], window=window, stride=stride,
                    max_tokens=max_tokens, threads=threads)
        out.print(f"fitted {r['params']}: validation ppl {r['ppl']:.3f} (LLM alone {r['base_ppl']:.3f}, "
                  f"{r['tokens']} tokens, {r['seconds']} s)")
    except (RagkitError, ValueError, OSError) as e:
        _fail(e)


@adapter_app.command("eval")
def eval_(
    adapters: list[str] = typer.Argument(..., help="Adapters (folders or names); several are also scored stacked, in order."),
    text: Path = typer.Option(..., "--text", help="Held-out text."),
    llm: Optional[str] = typer.Option(None, help="The LLM (default: the base model the first adapter's manifest names)."),
    lora: Optional[str] = typer.Option(None, help="LoRA / full fine-tune of the LLM: the reference for 'gap closed'."),
    as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report here "
                                          "(perplexity, gap closed and decode speed side by side)."),
    max_tokens: Optional[int] = typer.Option(None, help="Use only the first N tokens of the text."),
    window: int = typer.Option(512, help="Scoring window (tokens)."),
    stride: int = typer.Option(256, help="New tokens scored per window."),
    speed_tokens: int = typer.Option(48, help="Tokens decoded per speed run (0: skip the speed test)."),
    no_stack: bool = typer.Option(False, help="Do not score the adapters stacked."),
    threads: int = typer.Option(1, help="torch threads for perplexity (decoding always runs on 1)."),
) -> None:
    """Held-out perplexity of the LLM alone, with each adapter, stacked, and LoRA-tuned; gap closed;
    decode tokens/s ratios."""
    try:
        from ragkit.adaptation.evaluate import evaluate, format_table

        r = evaluate(adapters, _read(text, "--text"), llm=llm or _base_model(adapters[0]), lora=lora, stack=not no_stack, window=window,
                     stride=stride, max_tokens=max_tokens, speed_tokens=speed_tokens, threads=threads)
        out.print(format_table(r), highlight=False)
        out.print(f"{r['tokens']} held-out tokens; perplexity on {r['threads']['perplexity']} torch threads, "
                  f"decoding on 1; load average {r['load1']}")
        if as_json:
            as_json.parent.mkdir(parents=True, exist_ok=True)
            as_json.write_text(json.dumps(r, indent=2) + "\n")
        if report:
            from ragkit.report import adapter_report

            out.print(f"wrote {adapter_report(r, f'Domain adapters on {text.name}').write(report)}")
    except (RagkitError, ValueError, OSError) as e:
        _fail(e)


def _print_info(path, as_json: bool = False) -> None:
    from ragkit.adaptation import read_adapter_manifest

    m = read_adapter_manifest(path)
    if as_json:
        out.print_json(json.dumps(m))
        return
    out.print(f"[bold]{escape(str(path))}[/]: {m['kind']} adapter for {escape(str(m.get('base_model')))}")
    for key in ("params", "params_stacked", "models"):
        if m.get(key):
            out.print(f"  {key}: {escape(json.dumps(m[key]))}")
    t = {k: v for k, v in m.get("training", {}).items() if k not in ("losses",)}
    if t:
        out.print(f"  training: {escape(json.dumps(t))}", soft_wrap=True)
    if m.get("metrics"):
        brief = {k: {kk: vv for kk, vv in v.items() if kk != "grid"} if isinstance(v, dict) else v
                 for k, v in m["metrics"].items()}
        out.print(f"  metrics: {escape(json.dumps(brief))}", soft_wrap=True)


@adapter_app.command()
def info(
    adapter: str = typer.Argument(..., help="Adapter folder or name."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest."),
) -> None:
    """Show an adapter's kind, base model, parameters, training settings and metrics."""
    try:
        from ragkit.adaptation.base import resolve_adapter_path

        _print_info(resolve_adapter_path(adapter), as_json)
    except (RagkitError, OSError) as e:
        _fail(e)


@adapter_app.command()
def split(
    out_dir: Path = typer.Argument(Path("corpora/pydocs-lm"), help="Folder for train.txt, valid.txt, test.txt, split.json."),
    valid: float = typer.Option(0.1, help="Share of characters for validation."),
    test: float = typer.Option(0.15, help="Share of characters for test."),
) -> None:
    """Write the leak-checked Python-docs domain split (pydoc_data.topics, grouped by shared lines)."""
    from ragkit.data.splits import write_split

    try:
        r = write_split(out_dir, valid_frac=valid, test_frac=test)
    except (RagkitError, ValueError, OSError) as e:
        _fail(e)
    for k, v in r["splits"].items():
        out.print(f"{k}: {v['documents']} topics, {v['chars']} characters")
    for k, v in r["overlap"].items():
        out.print(f"{k} vs train: {v['shared_ngram_share']:.2%} of word 8-grams shared, "
                  f"{v['long_lines_in_train']} long lines found verbatim")
