"""Domain adapters (see `ragkit.adaptation.base`): black-box knowledge injection and white-box
decode-time logit adjustment, trained, fitted and evaluated by ragkit."""
from ragkit.adaptation.base import (Adapter, AdapterError, LogitsAdapter, PromptAdapter, adapters_dir, check_same_tokenizer,
                   load_adapter, new_manifest, read_adapter_manifest, tokenizer_fingerprint,
                   update_manifest, write_adapter)

__all__ = ["Adapter", "AdapterError", "LogitsAdapter", "PromptAdapter", "adapters_dir", "check_same_tokenizer",
           "load_adapter", "new_manifest", "read_adapter_manifest", "tokenizer_fingerprint",
           "update_manifest", "write_adapter"]
