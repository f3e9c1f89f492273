"""Documents in, chunks out: corpus readers (BEIR, JSONL, folders), token-window chunking, and
leak-checked train/validation/test splits for domain adapters."""
