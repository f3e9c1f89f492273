"""Imports every module that registers an adapter kind (`register_kind`), so `load_adapter` knows
them all. Each module adds one import line here."""
from __future__ import annotations
