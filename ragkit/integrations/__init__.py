"""Bridges from ragkit to other frameworks; each is an optional extra that ragkit's core never imports
(`ragkit.integrations.llama_index` needs `pip install 'ragkit[llamaindex]'`)."""
