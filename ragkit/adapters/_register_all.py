"""Imports every module that registers an adapter kind (`register_kind`), so `load_adapter` knows
them all. Each module adds one import line here."""
from __future__ import annotations
from . import knowledge  # noqa: F401,E402 - black-box knowledge injection (kind: knowledge)
from . import train  # noqa: F401 - lora, full, distill
from . import logits  # noqa: F401 - proxy, poe, contrastive
from . import knn  # noqa: F401 - knn
