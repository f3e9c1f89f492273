"""The one resolver for references to models and adapters.

A reference is a folder path, a name under the adapters folder, an alias ("default", "smollm2"), a
packaged model (shipped in a PyPI package, found without importing it) or a hub id. Folders are
looked for in one order everywhere: as given, inside or beside the folder that holds the reference
(an adapter's manifest), then under `adapters_dir()`.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable, Mapping

from ragkit.errors import AdapterError


def adapters_dir() -> Path:
    """Where adapters are saved and looked up by name: `$RAGKIT_ADAPTERS`, default `adapters/`."""
    return Path(os.environ.get("RAGKIT_ADAPTERS", "adapters"))


def find_folder(ref: str | Path, near: Path | None = None) -> Path | None:
    """The existing folder `ref` names, or None: as given, inside or beside `near` (the folder that
    holds the reference), then under `adapters_dir()`."""
    p = Path(ref)
    candidates = [p]
    if not p.is_absolute():
        if near is not None:
            candidates += [Path(near) / p, Path(near).parent / p]
        candidates.append(adapters_dir() / p)
    for c in candidates:
        if c.is_dir():
            return c
    return None


def resolve_folder_or_name(ref: str | Path, near: Path | None = None) -> str:
    """An existing folder as an absolute path, else the reference itself (an alias or hub id)."""
    found = find_folder(ref, near)
    return str(found.resolve()) if found is not None else str(ref)


def resolve_adapter(name_or_path: str | Path) -> Path:
    """An adapter folder: a path as given, or a name under `adapters_dir()`."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    named = adapters_dir() / str(name_or_path)
    if named.is_dir():
        return named
    raise AdapterError(f"no adapter {str(name_or_path)!r}: neither a folder nor a name under {adapters_dir()}/")


def package_path(package: str, relpath: str = "") -> Path | None:
    """A file or folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    return path if path.exists() else None


def resolve_model(ref: str, aliases: Mapping[str, str],
                  packaged: Callable[[str], Path | None] = lambda model_id: None) -> tuple[str, str]:
    """(model id, what to load) for a model reference: a local folder as is, an alias's packaged
    copy (`packaged(model_id)`, None when not installed), or the hub id."""
    if os.path.isdir(ref):
        folder = Path(ref).resolve()
        return folder.name, str(folder)
    model_id = aliases.get(ref, ref)
    local = packaged(model_id)
    return (model_id, str(local)) if local is not None else (model_id, model_id)
