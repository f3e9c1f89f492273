"""Self-contained HTML reports: tables and inline SVG plots in one file, no script and no network.

`ragkit eval --report`, `ragkit eval-qa --report`, `ragkit adapter eval --report` and the bench
scripts write them with `retrieval_report`, `qa_report` and `adapter_report`, each built from the
same dicts those commands print and write as JSON. `Report` is the small builder under them: a
heading, a paragraph, a table, a grouped bar chart, a line chart, a box plot.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Sequence

PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"]
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2329;max-width:70rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d9dee3}
h3{font-size:1rem}.sub{color:#5f6b76;margin-top:0}table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d9dee3;padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f6f7f9}td.best{font-weight:700}td.warn{color:#d1242f}figure{margin:.5rem 0 1.5rem}
figcaption{font-size:.9rem;color:#5f6b76}svg{max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#1d2329}
.note{color:#5f6b76;font-size:.9rem}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 10) for i in range(int(math.ceil((hi - first) / step)) + 1)]


class Report:
    """An HTML page built part by part; `html()` gives it whole, `write(path)` saves it atomically."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title, self.subtitle = title, subtitle
        self.parts: list[str] = []
        self.figures = 0

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts.append(f"<h{level}>{_e(text)}</h{level}>")
        return self

    def text(self, text: str, cls: str = "") -> "Report":
        self.parts.append(f'<p{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{_e(text)}</p>')
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence], classes: Sequence[Sequence[str]] | None = None,
              digits: int = 4) -> "Report":
        """`classes[i][j]` (optional) styles cell j of row i: "best" or "warn"."""
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        body = []
        for i, row in enumerate(rows):
            cells = []
            for j, value in enumerate(row):
                cls = classes[i][j] if classes and classes[i][j] else ""
                cells.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{_e(_fmt(value, digits))}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def _figure(self, svg: str, caption: str) -> "Report":
        self.figures += 1
        self.parts.append(f'<figure>{svg}<figcaption>Figure {self.figures}. {_e(caption)}</figcaption></figure>')
        return self

    def bar_chart(self, categories: Sequence[str], series: dict[str, Sequence[float | None]], caption: str,
                  y_label: str = "", y_max: float | None = None) -> "Report":
        """Grouped bars: one group per category, one bar per series (a missing value leaves a gap)."""
        values = [v for vs in series.values() for v in vs if v is not None]
        top = y_max if y_max is not None else (max(values) if values else 1.0) * 1.1 or 1.0
        ticks = [t for t in _ticks(0.0, top) if t <= top * 1.0001]
        width, height, left, bottom, right, top_pad = 760, 300, 56, 60, 150, 16
        plot_w, plot_h = width - left - right, height - bottom - top_pad
        group_w = plot_w / max(1, len(categories))
        bar_w = group_w * 0.8 / max(1, len(series))
        y = lambda v: top_pad + plot_h * (1 - v / top)  # noqa: E731
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
               f'aria-label="{_e(caption)}" class="chart bar-chart">']
        for t in ticks:
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e8eb"/>'
                       f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{_e(_fmt(round(t, 6), 2))}</text>')
        for gi, category in enumerate(categories):
            x0 = left + gi * group_w + group_w * 0.1
            for si, (name, vs) in enumerate(series.items()):
                v = vs[gi]
                if v is None:
                    continue
                h = max(0.0, plot_h * min(v, top) / top)
                out.append(f'<rect class="bar" x="{x0 + si * bar_w:.1f}" y="{top_pad + plot_h - h:.1f}" '
                           f'width="{bar_w * 0.92:.1f}" height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}">'
                           f'<title>{_e(category)} · {_e(name)}: {_e(_fmt(v))}</title></rect>')
            out.append(f'<text x="{left + (gi + 0.5) * group_w:.1f}" y="{top_pad + plot_h + 16}" '
                       f'text-anchor="middle">{_e(category)}</text>')
        return self._close_chart(out, left, plot_w, top_pad, plot_h, y_label, list(series), caption)

    def line_chart(self, x: Sequence[float], series: dict[str, Sequence[float | None]], caption: str,
                   x_label: str = "", y_label: str = "", log_x: bool = False) -> "Report":
        """One polyline per series over the shared `x` values (points marked)."""
        values = [v for vs in series.values() for v in vs if v is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        lo = min(0.0, lo)
        ticks = _ticks(lo, hi)
        top = ticks[-1]
        width, height, left, bottom, right, top_pad = 760, 300, 56, 50, 150, 16
        plot_w, plot_h = width - left - right, height - bottom - top_pad
        fx = (lambda v: math.log10(v)) if log_x else (lambda v: float(v))  # noqa: E731
        x_lo, x_hi = fx(min(x)), fx(max(x))
        px = lambda v: left + plot_w * ((fx(v) - x_lo) / ((x_hi - x_lo) or 1.0))  # noqa: E731
        py = lambda v: top_pad + plot_h * (1 - (v - lo) / ((top - lo) or 1.0))  # noqa: E731
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
               f'aria-label="{_e(caption)}" class="chart line-chart">']
        for t in ticks:
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e5e8eb"/>'
                       f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_e(_fmt(round(t, 6), 2))}</text>')
        for v in x:
            out.append(f'<text x="{px(v):.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle">{_e(v)}</text>')
        for si, (name, vs) in enumerate(series.items()):
            points = [(px(a), py(b)) for a, b in zip(x, vs) if b is not None]
            color = PALETTE[si % len(PALETTE)]
            out.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                       f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in points)}"><title>{_e(name)}</title></polyline>')
            out.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in points)
        if x_label:
            out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">{_e(x_label)}</text>')
        return self._close_chart(out, left, plot_w, top_pad, plot_h, y_label, list(series), caption)

    def _close_chart(self, out: list[str], left: float, plot_w: float, top_pad: float, plot_h: float,
                     y_label: str, names: list[str], caption: str) -> "Report":
        """The x axis line, the y label, the legend; then the chart becomes a figure."""
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top_pad + plot_h}" y2="{top_pad + plot_h}" stroke="#57606a"/>')
        if y_label:
            out.append(f'<text x="14" y="{top_pad + plot_h / 2:.1f}" transform="rotate(-90 14 {top_pad + plot_h / 2:.1f})" '
                       f'text-anchor="middle">{_e(y_label)}</text>')
        out.extend(self._legend(names, left + plot_w + 16, top_pad))
        out.append("</svg>")
        return self._figure("".join(out), caption)

    def box_plot(self, boxes: dict[str, dict[str, float]], caption: str, x_label: str = "") -> "Report":
        """Horizontal boxes from percentiles: whiskers p5–p95, box p25–p75, a line at p50."""
        if not boxes:
            return self
        hi = max(b["p95"] for b in boxes.values()) * 1.05 or 1.0
        ticks = [t for t in _ticks(0.0, hi) if t <= hi * 1.0001]
        row_h, left, right = 30, 200, 30
        width, height = 760, 40 + row_h * len(boxes)
        plot_w = width - left - right
        px = lambda v: left + plot_w * min(v, hi) / hi  # noqa: E731
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
               f'aria-label="{_e(caption)}" class="chart box-plot">']
        for t in ticks:
            out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="8" y2="{height - 28}" stroke="#e5e8eb"/>'
                       f'<text x="{px(t):.1f}" y="{height - 14}" text-anchor="middle">{_e(_fmt(round(t, 6), 1))}</text>')
        for i, (name, b) in enumerate(boxes.items()):
            cy = 8 + row_h * i + row_h / 2
            color = PALETTE[i % len(PALETTE)]
            out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{_e(name)}</text>'
                       f'<line x1="{px(b["p5"]):.1f}" x2="{px(b["p95"]):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{color}"/>'
                       f'<rect class="box" x="{px(b["p25"]):.1f}" y="{cy - 9:.1f}" '
                       f'width="{max(1.0, px(b["p75"]) - px(b["p25"])):.1f}" height="18" fill="{color}" fill-opacity=".25" '
                       f'stroke="{color}"><title>{_e(name)}: p50 {_e(_fmt(b["p50"], 2))}, p95 {_e(_fmt(b["p95"], 2))}</title></rect>'
                       f'<line x1="{px(b["p50"]):.1f}" x2="{px(b["p50"]):.1f}" y1="{cy - 9:.1f}" y2="{cy + 9:.1f}" '
                       f'stroke="{color}" stroke-width="2"/>')
        if x_label:
            out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 1}" text-anchor="middle">{_e(x_label)}</text>')
        out.append("</svg>")
        return self._figure("".join(out), caption)

    @staticmethod
    def _legend(names: list[str], x: float, y: float) -> list[str]:
        return [f'<rect x="{x}" y="{y + 18 * i}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>'
                f'<text x="{x + 18}" y="{y + 18 * i + 11}">{_e(name)}</text>' for i, name in enumerate(names)]

    def html(self) -> str:
        sub = f'<p class="sub">{_e(self.subtitle)}</p>' if self.subtitle else ""
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(self.title)}</title>'
                f"<style>{_CSS}</style></head><body><h1>{_e(self.title)}</h1>{sub}{''.join(self.parts)}</body></html>\n")

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page (a temp file renamed into place: a reader never sees half a report)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.html(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


# -- the reports ragkit writes -----------------------------------------------------------------------
RECALL_KS = (1, 5, 10, 20, 50, 100)


def retrieval_report(sets: dict[str, dict[str, dict]], title: str = "Retrieval evaluation",
                     subtitle: str = "") -> Report:
    """`{set: {retriever: {"nDCG@10", "R@100", "RR@10", ...}}}` (what `ragkit eval` computes): a
    table per set with the best system in bold and any fusion that loses to its best member in red,
    nDCG@10 per set and retriever (with the mean over sets), recall@k curves and query latencies."""
    report = Report(title, subtitle)
    retrievers = list(dict.fromkeys(r for res in sets.values() for r in res))
    report.heading("nDCG@10 per set and retriever")
    categories = list(sets) + (["mean"] if len(sets) > 1 else [])
    series = {}
    for r in retrievers:
        values = [sets[s].get(r, {}).get("nDCG@10") for s in sets]
        got = [v for v in values if v is not None]
        series[r] = values + ([sum(got) / len(got) if len(got) == len(sets) else None] if len(sets) > 1 else [])
    report.bar_chart(categories, series, "nDCG@10 of each retriever on each set" +
                     (" and on the mean over sets" if len(sets) > 1 else ""), "nDCG@10", y_max=1.0)
    for name, res in sets.items():
        report.heading(name, 3)
        best = max((m.get("nDCG@10", 0.0) for m in res.values()), default=0.0)
        cols = ["nDCG@10", "R@100", "RR@10", "index_s", "ms_per_query"]
        rows, classes, warnings = [], [], []
        for r, m in res.items():
            rows.append([r] + [m.get(c) for c in cols])
            cls = ["", "best" if m.get("nDCG@10") == best else ""] + [""] * (len(cols) - 1)
            parts = [p for p in _fused(r) if p in res]
            top_member = max((res[p]["nDCG@10"] for p in parts), default=None)
            if top_member is not None and m["nDCG@10"] < top_member:
                cls[0] = "warn"
                warnings.append(f"{r} ({m['nDCG@10']:.4f}) is below its best member ({top_member:.4f}).")
            classes.append(cls)
        report.table(["retriever", "nDCG@10", "R@100", "RR@10", "index s", "ms / query"], rows, classes)
        for w in warnings:
            report.text(w, "note")
        curves = {r: [m.get(f"R@{k}") for k in RECALL_KS] for r, m in res.items() if any(f"R@{k}" in m for k in RECALL_KS)}
        if curves:
            report.line_chart(list(RECALL_KS), curves, f"{name}: recall at k (documents)", "k", "recall", log_x=True)
        boxes = {r: m["latency_ms"] for r, m in res.items() if isinstance(m.get("latency_ms"), dict)}
        if boxes:
            report.box_plot(boxes, f"{name}: query latency (ms; box p25–p75, whiskers p5–p95)", "ms per query")
    return report


def _fused(name: str) -> list[str]:
    """The systems a fusion combines (a fusion that loses to the best of them is flagged)."""
    if name == "hybrid":
        return ["bm25", "dense"]
    if name.endswith("+colbert_rerank"):
        return [name[: -len("+colbert_rerank")], "colbert"]
    return []


def qa_report(result: dict, title: str = "QA evaluation") -> Report:
    """What `ragkit eval-qa` computes: accuracy (or token F1) and groundedness per condition."""
    conditions = result["conditions"]
    report = Report(title, f"LLM {result.get('llm')} · k {result.get('k')}" +
                    (f" · adapters {', '.join(a['name'] for a in result['adapters'])}" if result.get("adapters") else ""))
    names = list(conditions)
    score = {c: m.get("accuracy", m.get("token_f1")) for c, m in conditions.items()}
    best = max((v for v in score.values() if v is not None), default=None)
    report.table(["condition", "questions", "accuracy / F1", "groundedness", "seconds"],
                 [[c, m["questions"], score[c], m.get("groundedness"), m.get("seconds")] for c, m in conditions.items()],
                 [["", "", "best" if score[c] == best else "", "", ""] for c in names])
    series = {"accuracy / F1": [score[c] for c in names]}
    if any("groundedness" in m for m in conditions.values()):
        series["groundedness"] = [conditions[c].get("groundedness") for c in names]
    report.bar_chart(names, series, "Accuracy and groundedness per condition", y_max=1.0)
    return report


def adapter_report(result: dict, title: str = "Domain adapters") -> Report:
    """What `ragkit adapter eval` computes: held-out perplexity, the share of the LoRA gap closed and
    decode speed per system, side by side."""
    systems = result["systems"]
    names = list(systems)
    report = Report(title, f"LLM {result.get('llm')} · {result.get('tokens')} held-out tokens"
                    + (f" · reference {result['lora']}" if result.get("lora") else ""))
    best = min(s["ppl"] for s in systems.values())
    report.table(["system", "perplexity", "ppl reduction", "gap closed", "decode tok/s", "speed ratio"],
                 [[n, s["ppl"], s.get("ppl_reduction"), s.get("gap_closed"), s.get("decode_tokens_per_s"),
                   s.get("speed_ratio")] for n, s in systems.items()],
                 [["", "best" if s["ppl"] == best else "", "", "", "", ""] for s in systems.values()], digits=3)
    report.bar_chart(names, {"perplexity": [systems[n]["ppl"] for n in names]}, "Held-out perplexity (lower is better)",
                     "perplexity")
    if any(s.get("gap_closed") is not None for s in systems.values()):
        report.bar_chart(names, {"gap closed": [systems[n].get("gap_closed") for n in names]},
                         "Share of the perplexity gap to the fine-tuned reference closed", "gap closed")
    if any(s.get("decode_tokens_per_s") is not None for s in systems.values()):
        report.bar_chart(names, {"decode tok/s": [systems[n].get("decode_tokens_per_s") for n in names]},
                         "Decode speed (tokens/s, greedy, one thread)", "tokens/s")
    return report
