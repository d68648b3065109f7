"""What a checkpoint holds, without its data: tensor names, shapes, dtypes and ties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

# safetensors' dtype codes <-> torch dtypes (the format's spec lists these names).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "C64": torch.complex64,
}
SAFETENSORS_CODES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# Names accepted by --dtype / --accumulate.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(name: str) -> torch.dtype:
    """Turn "float32", "fp16", "bf16", ... into a torch dtype; raise ValueError otherwise."""
    aliases = {
        "fp64": "float64",
        "fp32": "float32",
        "fp16": "float16",
        "half": "float16",
        "bf16": "bfloat16",
        "double": "float64",
        "float": "float32",
    }
    key = aliases.get(name.lower(), name.lower())
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]


def is_float(dtype: torch.dtype) -> bool:
    """True for dtypes that soups average (floating point); integers and bools are carried."""
    return dtype.is_floating_point


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one stored tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def describe(self) -> str:
        """E.g. ``float32[768, 3072]``."""
        return f"{str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


@dataclass(frozen=True)
class Layout:
    """The tensors of a checkpoint, in storage order.

    ``specs`` maps each *stored* (canonical) tensor name to its spec. ``aliases`` maps
    every other name of a tied tensor (two names sharing one storage, e.g. tied input
    and output embeddings) to its canonical name: arithmetic visits a tied tensor once
    and writers keep the tie.
    """

    specs: Mapping[str, TensorSpec]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for alias, target in self.aliases.items():
            assert target in self.specs, f"alias {alias} -> {target}: target not stored"
            assert alias not in self.specs, f"alias {alias} is also stored"

    @property
    def names(self) -> list[str]:
        """Every name a caller may ask for: stored names, then aliases."""
        return [*self.specs, *self.aliases]

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def spec(self, name: str) -> TensorSpec:
        return self.specs[self.canonical(name)]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.specs.values())
