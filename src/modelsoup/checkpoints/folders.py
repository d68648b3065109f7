"""Hugging Face model folders as one ingredient: ``model.safetensors``, ``pytorch_model.bin``
or their sharded ``*.index.json``, each shard read lazily by `files`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from .files import SafetensorsFile, TorchFile, open_file
from .layout import Layout, TensorSpec

# Files that make a Hugging Face model folder, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


class ShardedCheckpoint:
    """A checkpoint split over files, as in a Hugging Face model folder.

    ``folder`` is a model folder (``model.safetensors[.index.json]``,
    ``pytorch_model.bin[.index.json]``), or ``index`` names an index file directly.
    """

    def __init__(self, folder: str | os.PathLike, index: str | None = None, key: str | None = None):
        self.folder = Path(folder)
        if index is None:
            present = [f for f in HF_WEIGHT_FILES if (self.folder / f).is_file()]
            if not present:
                listing = sorted(p.name for p in self.folder.iterdir())[:20]
                raise CheckpointError(
                    f"{self.folder}: is a folder but holds none of {list(HF_WEIGHT_FILES)} "
                    f"(it holds {listing}); point at a Hugging Face model folder (a "
                    "save_pretrained output or a Trainer checkpoint-* folder) or at a file"
                )
            index = present[0]
        self.weights_file = index
        weight_map: dict[str, str] = {}
        if index.endswith(".index.json"):
            weight_map = self._read_index(self.folder / index)
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = [index]
        self._shards = [open_file(self.folder / s, key) for s in shard_names]
        self._owner: dict[str, SafetensorsFile | TorchFile] = {}
        specs: dict[str, TensorSpec] = {}
        aliases: dict[str, str] = {}
        for shard in self._shards:
            for name in shard.layout.names:
                if name in self._owner:
                    raise CheckpointError(
                        f"{self.folder}: tensor {name!r} is stored in both "
                        f"{self._owner[name].path.name} and {shard.path.name}"
                    )
                self._owner[name] = shard
            specs.update(shard.layout.specs)
            aliases.update(shard.layout.aliases)
        for name, fname in weight_map.items():
            owner = self._owner.get(name)
            if owner is None or owner.path.name != fname:
                raise CheckpointError(
                    f"{self.folder / index}: lists tensor {name!r} in {fname}, but that "
                    "shard does not hold it; the index and the shards come from "
                    "different saves"
                )
        self._layout = Layout(specs, aliases)

    def _read_index(self, path: Path) -> dict[str, str]:
        """The index's weight map (tensor name -> shard file name), checked."""
        try:
            index = json.loads(path.read_text())
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
            ):
                raise TypeError("weight_map is not a map of names to file names")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{path}: not a valid index ({type(e).__name__}: {e}); an index is JSON with a "
                '"weight_map" from tensor names to shard file names'
            ) from e
        for fname in set(weight_map.values()):
            if Path(fname).name != fname or fname in (".", ".."):
                raise CheckpointError(
                    f"{path}: shard name {fname!r} is not a plain file name in the same folder"
                )
            if not (self.folder / fname).is_file():
                raise CheckpointError(
                    f"{path}: shard {fname} is missing from {self.folder}; the folder "
                    "was copied incompletely"
                )
        return weight_map

    @property
    def source(self) -> str:
        return str(self.folder)

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.folder, *(s.path for s in self._shards))

    def get(self, name: str) -> torch.Tensor:
        return self._owner[name].get(name)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._owner[name].read(name, start, stop)

    def close(self) -> None:
        for s in self._shards:
            if isinstance(s, SafetensorsFile):
                s.close()

    @property
    def storage_format(self) -> str:
        n = len(self._shards)
        return f"hf-folder ({self.weights_file}{f', {n} shards' if n > 1 else ''})"

    def __repr__(self) -> str:
        return f"ShardedCheckpoint({str(self.folder)!r}, {self.weights_file!r})"
