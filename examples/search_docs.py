"""Index a folder (or .jsonl / BEIR folder) once, then search it: the Python API in a few lines.

usage: python examples/search_docs.py CORPUS "your question" [INDEX_DIR]
"""
import sys
from pathlib import Path

from ragkit import Index

corpus, question = sys.argv[1], sys.argv[2]
index_dir = Path(sys.argv[3] if len(sys.argv) > 3 else "indexes/example")
if (index_dir / "manifest.json").exists():
    index = Index.load(index_dir)
else:
    index = Index.build(corpus)
    index.save(index_dir)
for hit in index.search(question, k=5):
    print(f"{hit.rank}. {hit.title or hit.doc_id} [{hit.chunk_id}] {hit.source} chars {hit.start}-{hit.end}")
    print("   ", " ".join(hit.text.split())[:200])
