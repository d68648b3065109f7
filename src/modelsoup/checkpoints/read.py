"""Opening a checkpoint of any supported kind as an ingredient (`open_ingredient`), and
naming its format (`describe_format`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import CheckpointError
from .adapters import LoraAdapter, is_adapter_folder
from .files import open_file
from .folders import ShardedCheckpoint
from .ingredients import Ingredient


def open_ingredient(
    path: str | os.PathLike, key: str | None = None, *, base_model: str | os.PathLike | None = None
) -> Ingredient:
    """Open a checkpoint lazily: nothing but its header is read here.

    ``path`` is a ``.safetensors`` file, a PyTorch file (``.pt``/``.pth``/``.bin``/
    ``.ckpt``), a Hugging Face model folder, a ``*.index.json`` of a sharded
    checkpoint, or a PEFT LoRA adapter folder (the model it defines on its base:
    ``base_model``, default the adapter's ``base_model_name_or_path``). ``key`` names
    the entry of a PyTorch checkpoint that holds the state dict when it is not one of
    the usual wrapper keys.

    Raises `CheckpointError` naming the file and the fix when it cannot be read.
    """
    p = Path(path)
    if is_adapter_folder(p):
        return LoraAdapter(p, base_model=base_model)
    if p.is_dir():
        return ShardedCheckpoint(p, key=key)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.name.endswith(".index.json"):
        return ShardedCheckpoint(p.parent, index=p.name, key=key)
    return open_file(p, key)


@runtime_checkable
class Described(Protocol):
    """A reader that names its storage format (``storage_format``: "safetensors",
    "pytorch", "hf-folder (...)", "lora adapter (...)")."""

    @property
    def storage_format(self) -> str: ...


def describe_format(ingredient: Ingredient) -> str:
    """A short name of the ingredient's storage format, for `modelsoup inspect`."""
    if isinstance(ingredient, Described):
        return ingredient.storage_format
    return type(ingredient).__name__


__all__ = ["Described", "describe_format", "open_ingredient"]
