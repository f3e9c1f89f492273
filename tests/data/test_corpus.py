import json

import pytest

from ragkit.data.corpus import (Document, LoadReport, check_unique_ids, detect_format, html_to_text, load_beir_qrels,
                           load_corpus, load_folder, load_jsonl)
from ragkit.errors import CorpusError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_fields_and_metadata(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", [json.dumps({"doc": "a", "body": "alpha", "name": "A", "year": 2020}),
                                           json.dumps({"doc": 7, "body": "beta"})])
    docs = load_jsonl(p, id_field="doc", text_field="body", title_field="name")
    assert [d.id for d in docs] == ["a", "7"]
    assert docs[0].title == "A" and docs[0].metadata == {"year": 2020}
    assert docs[1].title == "" and docs[1].source == "c.jsonl:2"


def test_malformed_line_names_file_and_line(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", ['{"id": "1", "text": "ok"}', '{"id": "2", "text": '])
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON"):
        load_jsonl(p)


def test_missing_field_and_wrong_type(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", ['{"id": "1", "text": "ok"}', '', '{"id": "2"}'])
    with pytest.raises(CorpusError, match=r"c\.jsonl:3: missing field 'text'"):
        load_jsonl(p)
    p = write_lines(tmp_path / "d.jsonl", ['{"id": "1", "text": ["x"]}'])
    with pytest.raises(CorpusError, match=r"d\.jsonl:1: field 'text' must be a string"):
        load_jsonl(p)


def test_duplicate_ids_name_both_lines(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", ['{"id": "1", "text": "a"}', '{"id": "2", "text": "b"}',
                                           '{"id": "1", "text": "c"}'])
    with pytest.raises(CorpusError, match=r"c\.jsonl:3: duplicate id '1' \(first seen on line 1\)"):
        load_jsonl(p)
    with pytest.raises(CorpusError, match="duplicate document id 'x'"):
        check_unique_ids([Document("x", "a"), Document("x", "b")])


def test_empty_and_non_utf8_jsonl(tmp_path):
    p = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(CorpusError, match="corpus is empty"):
        load_jsonl(p)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not valid UTF-8"):
        load_jsonl(bad)


def test_folder_recursive_formats_and_titles(tmp_path):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "a.md").write_text("# Markdown title\n\nSome *text*.")
    (tmp_path / "sub" / "b.rst").write_text("RST Title\n=========\n\nBody text.")
    (tmp_path / "sub" / "deep" / "c.html").write_text(
        "<html><head><title>Page</title><style>p{color:red}</style></head>"
        "<body><h1>Head</h1><p>Para &amp; more</p><script>var x=1;</script></body></html>")
    (tmp_path / "notes.txt").write_text("plain notes")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = {d.id: d for d in load_folder(tmp_path)}
    assert set(docs) == {"a.md", "sub/b.rst", "sub/deep/c.html", "notes.txt"}
    assert docs["a.md"].title == "Markdown title"
    assert docs["sub/b.rst"].title == "RST Title"
    html = docs["sub/deep/c.html"]
    assert html.title == "Page" and "Para & more" in html.text and "color" not in html.text and "var x" not in html.text
    assert docs["notes.txt"].title == "notes"


def test_folder_skips_non_utf8_with_a_count_or_fails_when_strict(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = LoadReport()
    docs = load_folder(tmp_path, report=report)
    assert [d.id for d in docs] == ["good.txt"]
    assert report.n_skipped == 1 and "not valid UTF-8" in report.skipped[0][1]
    with pytest.raises(CorpusError, match=r"latin1\.txt: not valid UTF-8"):
        load_folder(tmp_path, strict=True)


def test_folder_with_nothing_readable(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(CorpusError, match="no readable"):
        load_folder(tmp_path)


def test_detect_format_and_missing_path(tmp_path):
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "1", "title": "t", "text": "x"}\n')
    assert detect_format(tmp_path / "beir") == "beir"
    assert load_corpus(tmp_path / "beir")[0].title == "t"
    with pytest.raises(CorpusError, match="no such file or folder"):
        load_corpus(tmp_path / "nope")


def test_qrels_errors_name_the_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n")
    with pytest.raises(CorpusError, match=r"test\.tsv:3: expected 3 tab-separated fields"):
        load_beir_qrels(tmp_path)


def test_html_to_text_block_structure():
    title, text = html_to_text("<title>T</title><p>one</p><p>two</p><ul><li>a</li><li>b</li></ul>")
    assert title == "T" and text.split("\n") == ["one", "two", "a", "b"]
