"""HTML reports (`ragkit.report`): built from real evaluations, self-contained, and rendered by a
real browser."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from ragkit.report import Report, adapter_report, qa_report, retrieval_report
from ragkit.retrieval.evaluate import evaluate_beir
from tests.browser import MISSING, chromium

pytestmark = pytest.mark.report


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(1 for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split()))


def beir_folder(root: Path, docs, queries: dict[str, str]) -> Path:
    """A small BEIR folder: `docs`, and each query judged relevant to the document of its key."""
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n"
                                               for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n"
                                                for i, q in enumerate(queries.values())))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{doc_id}\t1\n" for i, doc_id in enumerate(queries)))
    return root


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory, topic_docs):
    root = tmp_path_factory.mktemp("sets")
    docs = topic_docs[:80]
    first = beir_folder(root / "topics-a", docs[:40], {d.id: f"{d.title} statement" for d in docs[:40:4]})
    second = beir_folder(root / "<i>topics-b", docs[40:], {d.id: d.text[:80] for d in docs[40::4]})
    return first, second


def test_a_retrieval_report_holds_the_tables_and_plots_of_a_real_evaluation(two_sets, tmp_path):
    sets = {p.name: evaluate_beir(p, ["bm25"], show_progress=False) for p in two_sets}
    page = retrieval_report(sets, "Retrieval evaluation").write(tmp_path / "r.html").read_text()
    tags = Tags(page)
    assert tags.count("rect", "bar") == 3  # bm25 on two sets and on their mean
    assert tags.count("polyline", "series") == 2 and tags.count("rect", "box") == 2  # recall@k and latency per set
    text = "".join(tags.text)
    for res in sets.values():
        assert f"{res['bm25']['nDCG@10']:.4f}" in text and f"{res['bm25']['R@100']:.4f}" in text
    assert "<i>topics-b" in text and "<i>" not in page  # names are escaped
    assert "<script" not in page and not [a for _, a in tags.tags if a.get("src") or a.get("href")]  # self-contained
    assert 0 < sets["topics-a"]["bm25"]["R@1"] <= sets["topics-a"]["bm25"]["R@10"] <= sets["topics-a"]["bm25"]["R@100"]


def test_a_fusion_below_its_best_member_is_flagged(tmp_path):
    res = {"bm25": {"nDCG@10": 0.61, "R@100": 0.9}, "dense": {"nDCG@10": 0.55, "R@100": 0.92},
           "hybrid": {"nDCG@10": 0.58, "R@100": 0.95}}
    page = retrieval_report({"s": res}).html()
    assert "hybrid (0.5800) is below its best member (0.6100)" in page
    assert '<td class="warn">hybrid</td>' in page and '<td class="best">0.6100</td>' in page
    res["hybrid"]["nDCG@10"] = 0.65
    assert "below its best member" not in retrieval_report({"s": res}).html()


def test_the_cli_writes_a_report_for_several_sets(two_sets, tmp_path):
    result = CliRunner().invoke(app, ["eval", *map(str, two_sets), "--retrievers", "bm25", "--report",
                                      str(tmp_path / "eval.html"), "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "eval.json").read_text())["sets"]
    assert set(figures) == {p.name for p in two_sets}
    page = (tmp_path / "eval.html").read_text()
    assert Tags(page).count("rect", "bar") == 3 and f"{figures['topics-a']['bm25']['nDCG@10']:.4f}" in page


def test_qa_and_adapter_reports_show_every_condition_and_system(tmp_path):
    qa = {"llm": "m", "k": 3, "conditions": {
        "closed": {"questions": 20, "accuracy": 0.40, "seconds": 9.0},
        "retrieval": {"questions": 20, "accuracy": 0.55, "groundedness": 0.71, "seconds": 30.0}}}
    tags = Tags(qa_report(qa).html())
    assert tags.count("rect", "bar") == 3  # accuracy twice, groundedness once (closed has none)
    assert '<td class="best">0.5500</td>' in qa_report(qa).html()
    adapters = {"llm": "m", "tokens": 5000, "lora": "lora-dir", "systems": {
        "base": {"ppl": 20.0, "ppl_reduction": 0.0, "gap_closed": 0.0, "decode_tokens_per_s": 10.0, "speed_ratio": 1.0},
        "proxy": {"ppl": 15.0, "ppl_reduction": 0.25, "gap_closed": 0.6, "decode_tokens_per_s": 7.0, "speed_ratio": 0.7},
        "lora": {"ppl": 12.0, "ppl_reduction": 0.4, "gap_closed": 1.0}}}
    page = adapter_report(adapters).html()
    tags = Tags(page)
    assert tags.count("svg") == 3 and tags.count("rect", "bar") == 3 + 3 + 2  # ppl, gap closed, speed (lora: none)
    assert '<td class="best">12.000</td>' in page


def test_report_writes_are_atomic_and_replace_the_old_file(tmp_path):
    path = tmp_path / "x.html"
    path.write_text("old")
    Report("new").text("hello").write(path)
    assert "hello" in path.read_text() and [p.name for p in tmp_path.iterdir()] == ["x.html"]


@pytest.mark.datasets
@pytest.mark.browser
@pytest.mark.slow
def test_a_report_of_two_shared_sets_renders_in_chromium(dataset, tmp_path):
    if MISSING:
        pytest.skip(MISSING)
    pytest.importorskip("selenium")
    sets = [dataset("adi"), dataset("time")]
    result = CliRunner().invoke(app, ["eval", *map(str, sets), "--retrievers", "bm25,dense,hybrid", "--report",
                                      str(tmp_path / "eval.html")])
    assert result.exit_code == 0, result.output
    driver = chromium(tmp_path / "profile")
    try:
        driver.get((tmp_path / "eval.html").as_uri())
        assert driver.title == "Retrieval evaluation"
        charts = driver.execute_script("return document.querySelectorAll('svg.chart').length")
        assert charts == 1 + 2 * 2  # nDCG@10 bars, then recall@k and latency per set
        bars = driver.execute_script(
            "return [...document.querySelectorAll('rect.bar')].map(r => r.getBoundingClientRect())"
            ".filter(b => b.width > 0 && b.height > 0).length")
        assert bars == 3 * 3  # three retrievers on adi, time and the mean, each drawn with a size
        lines = driver.execute_script("return [...document.querySelectorAll('polyline.series')]"
                                      ".filter(p => p.getBBox().width > 100).length")
        assert lines == 2 * 3
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000
    finally:
        driver.quit()
