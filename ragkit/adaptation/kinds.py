"""The adapter kinds ragkit knows: manifest `kind` -> "module:Class", imported on demand (no kind
registers itself as an import side effect). Each class is built by `Class.from_folder(path, manifest)`."""
from __future__ import annotations

from ragkit.runtime import import_object

KINDS: dict[str, str] = {
    "knowledge": "ragkit.adaptation.knowledge:KnowledgeAdapter",    # black-box: knowledge text in the prompt
    "lora": "ragkit.adaptation.train:ModelAdapter",                 # trained model folders (experts, small models)
    "full": "ragkit.adaptation.train:ModelAdapter",
    "distill": "ragkit.adaptation.train:ModelAdapter",
    "proxy": "ragkit.adaptation.logits:ProxyAdapter",               # white-box: decode-time logit adjustment
    "poe": "ragkit.adaptation.logits:PoEAdapter",
    "contrastive": "ragkit.adaptation.logits:ContrastiveAdapter",
    "knn": "ragkit.adaptation.knn:KNNAdapter",
}


def adapter_class(kind: str):
    """The class of adapter folders of `kind`; None when ragkit does not know the kind."""
    spec = KINDS.get(kind)
    return import_object(spec) if spec else None
