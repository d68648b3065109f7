"""Hugging Face model folders as one ingredient: ``model.safetensors``, ``pytorch_model.bin``
or their sharded ``*.index.json``, each shard read lazily by `files`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from .files import SafetensorsFile, TorchFile, open_file
from .ingredients import Origin
from .inputs import read_json, regular_file
from .layout import Layout, TensorSpec

# Files that make a Hugging Face model folder, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


# Files of a Hugging Face model folder that describe the model rather than hold weights
# or training state; copied from the first ingredient into a folder output.
# What a soup folder takes from the first ingredient's folder: the files transformers
# reads to load a model, its tokenizer and its processor, by name. Anything else there
# (eval_results.json, trainer_state.json, optimizer state, README) describes another model.
HF_LOAD_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "preprocessor_config.json",
        "processor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
        "chat_template.json",
    }
)


def hf_load_files(folder: Path) -> list[Path]:
    """The files of ``folder`` a copy of the model needs to load (`HF_LOAD_FILES`,
    ``*.tiktoken``, and the Python files its ``auto_map`` names for trust_remote_code),
    each checked: a regular file inside the folder (`inputs.regular_file`), its JSON
    parsed when small (a broken or hostile config fails here, not in transformers)."""
    code: set[str] = set()
    for name in ("config.json", "tokenizer_config.json"):
        if not os.path.lexists(folder / name):
            continue
        data = read_json(folder / name, folder)
        auto = data.get("auto_map") if isinstance(data, dict) else None
        for ref in (auto or {}).values() if isinstance(auto, dict) else ():
            for r in ref if isinstance(ref, list) else [ref]:
                if isinstance(r, str) and "." in r:
                    code.add(r.split("--")[-1].rsplit(".", 1)[0] + ".py")
    out = []
    for f in sorted(folder.iterdir()):
        if f.name in HF_LOAD_FILES or f.name in code or f.suffix == ".tiktoken":
            regular_file(f, folder)
            if f.suffix == ".json" and f.stat().st_size <= 1 << 20:
                read_json(f, folder)
            out.append(f)
    return out


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
        self._shards = [
            open_file(regular_file(self.folder / s, self.folder), key) for s in shard_names
        ]
        # what a soup folder copies from this one, checked now: before any work is done
        self.load_files = hf_load_files(self.folder)
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
        index = read_json(path, self.folder)
        try:
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
            ):
                raise TypeError("weight_map is not a map of names to file names")
        except (
            OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError
        ) as e:  # fmt: skip
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
    def origin(self) -> Origin:
        """A model folder: its config and tokenizer files go with a soup written as one."""
        return Origin(folder=self.folder, load_files=tuple(self.load_files))

    @property
    def files(self) -> tuple[Path, ...]:
        """The folder and every file read: the index (when sharded) and the shards."""
        index = (self.folder / self.weights_file,) if self.weights_file.endswith(".json") else ()
        return (self.folder, *index, *(s.path for s in self._shards))

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
