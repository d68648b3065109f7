"""Checkpoint files as ingredients: safetensors files, PyTorch files and Hugging Face
model folders (sharded or not).

Readers never map a whole file into the process for the length of a soup: a memory map
whose pages have been touched counts in the process's resident memory until it is
unmapped, so k open maps of k models would cost k models of RSS (measured: 4 open
``safe_open`` handles of 400 MB each read end to end peaked at 2.1 GB). Safetensors files
are read with ``pread`` into a fresh buffer per tensor; PyTorch zip files are opened
memory-mapped by ``torch.load(mmap=True)`` and each tensor's pages are released after
it is copied out.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import pickle
import struct
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, option
from .ingredients import (
    ALIASES_METADATA_KEY,
    NO_ORIGIN,
    TORCH_SUFFIXES,
    flat_range,
    normalize_names,
    tie_groups,
)
from .layout import SAFETENSORS_DTYPES, Layout, TensorSpec

# safetensors' own reader refuses headers above 100 MB; so do we.
_MAX_HEADER = 100 * 1024 * 1024


# Keys under which training scripts commonly nest the state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


class SafetensorsFile:
    """A ``.safetensors`` file, read tensor by tensor with ``pread``.

    The header is parsed and checked when the handle is made (every offset inside the
    file, sizes consistent with shapes), so a corrupt or truncated file is refused
    before any work.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from e
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path}: not a valid safetensors file ({what}); the file may be truncated "
            "or corrupt: copy it again or re-save it with safetensors.torch.save_file"
        )

    def _entry(self, name: str, info: Any) -> tuple[int, int, str, TensorSpec]:
        """One header entry checked: (first byte, end byte, name, spec)."""
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            ints = [*shape, begin, end]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
                raise TypeError("non-integer shape or offset")
            if min(ints, default=0) < 0:
                raise ValueError("negative shape or offset")
            # torch sizes and strides are int64: a zero-size tensor may still name
            # dimensions that overflow them
            if math.prod(max(d, 1) for d in shape) >= 2**63 or max(ints, default=0) >= 2**63:
                raise ValueError("a dimension or offset beyond 2**63")
        except (KeyError, TypeError, ValueError) as e:
            raise self._fail(f"entry for tensor {name!r} is malformed: {info!r:.200}") from e
        spec = TensorSpec(shape, dtype)
        if end - begin != spec.nbytes:
            raise self._fail(
                f"tensor {name!r}: {spec.describe()} needs {spec.nbytes} bytes but its "
                f"offsets span {end - begin}"
            )
        return begin, end, name, spec

    def _read_header(self) -> None:
        size = os.fstat(self._fd).st_size
        if size < 8:
            raise self._fail(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
        if n > _MAX_HEADER or 8 + n > size:
            raise self._fail(f"header length {n} does not fit a file of {size} bytes")
        raw = os.pread(self._fd, n, 8)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(f"header is not JSON: {e}") from e
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise self._fail("__metadata__ is not a map of strings to strings")
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + n
        data_len = size - self._data_start
        entries = sorted(
            (self._entry(name, info) for name, info in header.items()), key=lambda e: e[:2]
        )
        cursor = 0
        for begin, end, name, _ in entries:
            if begin != cursor:
                raise self._fail(f"tensor {name!r} starts at byte {begin}, expected {cursor}")
            cursor = end
        if cursor != data_len:
            raise self._fail(
                f"tensors end at byte {cursor} of the data section but the file holds "
                f"{data_len} bytes of data"
            )
        stored_names = [name for *_, name, _ in entries]
        rename = normalize_names(stored_names, str(self.path))
        by_stored = {name: (begin, spec) for begin, _, name, spec in entries}
        self._where = {new: by_stored[old] for new, old in rename.items()}
        aliases = {}
        if ALIASES_METADATA_KEY in meta:
            try:
                aliases = dict(json.loads(meta[ALIASES_METADATA_KEY]))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise self._fail(f"metadata {ALIASES_METADATA_KEY!r} is not a JSON map") from e
            for alias, target in aliases.items():
                if target not in self._where or alias in self._where:
                    raise self._fail(f"alias {alias!r} -> {target!r} does not name a tensor")
        self._layout = Layout({n: s for n, (_, s) in self._where.items()}, aliases)

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def layout(self) -> Layout:
        return self._layout

    origin = NO_ORIGIN  # a plain file: no folder, nothing derived

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def get(self, name: str) -> torch.Tensor:
        return self.read(name).view(self._layout.spec(name).shape)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        begin, spec = self._where[self._layout.canonical(name)]
        start, stop = flat_range(spec, start, stop)
        size = spec.dtype.itemsize
        nbytes = (stop - start) * size
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        offset, done = self._data_start + begin + start * size, 0
        while done < nbytes:  # pread may return short reads for large sizes
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise self._fail(f"file ended while reading tensor {name!r}")
            done += got
        return buf.view(spec.dtype)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    @property
    def storage_format(self) -> str:
        return "safetensors"

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r})"


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _release_pages(t: torch.Tensor) -> None:
    """Drop the pages under a memory-mapped tensor from this process.

    ``MADV_DONTNEED`` on a private, never-written file mapping only forgets the pages
    (they stay in the page cache; a later access maps them again). Without it, every page
    read from k mapped checkpoints would stay resident for the life of the handles.
    """
    if _libc is None or t.numel() == 0:
        return
    start = t.data_ptr()
    aligned = start - start % mmap.PAGESIZE
    length = t.numel() * t.dtype.itemsize + (start - aligned)
    _libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), 4)  # MADV_DONTNEED


def _unwrap_state_dict(obj: object, key: str | None, path: Path) -> Mapping[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint (plain, or nested under a key)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict; save "
            "model.state_dict() rather than the model or a list"
        )
    if key is not None:
        if key not in obj:
            raise CheckpointError(
                f"{path}: has no key {key!r}; its top-level keys are {sorted(map(str, obj))[:20]}"
            )
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(obj).__name__}, not a dict")
    elif obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in WRAPPER_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
        else:
            raise CheckpointError(
                f"{path}: is a dict whose values are not all tensors and none of the usual "
                f"keys {list(WRAPPER_KEYS)} holds a state dict; its keys are "
                f"{sorted(map(str, obj))[:20]}. Name the key that holds the weights "
                f"({option('key', 'KEY')})"
            )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entries {bad[:5]} of the state dict are not tensors; a state dict "
            "must map names to tensors"
        )
    return obj


class TorchFile:
    """A PyTorch checkpoint (``.pt``, ``.pth``, ``.bin``, ``.ckpt``).

    Opened with ``torch.load(weights_only=True)`` only: a pickle that would build any
    object other than tensors and plain containers is refused, never run. Zip-format
    files (``torch.save`` since 1.6) are memory-mapped and read lazily; legacy files are
    loaded whole. A wrapper dict (``{"state_dict": ...}``, ``{"model": ...}``) is
    unwrapped, or the key is named with ``key=``.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        obj, self._mapped = self._load()
        sd = _unwrap_state_dict(obj, key, self.path)
        rename = normalize_names(list(sd), str(self.path))
        self._tensors = {new: sd[old] for new, old in rename.items()}
        aliases = tie_groups(self._tensors)
        self._layout = Layout(
            {
                n: TensorSpec(tuple(t.shape), t.dtype)
                for n, t in self._tensors.items()
                if n not in aliases
            },
            aliases,
        )

    def _load(self) -> tuple[object, bool]:
        try:
            mapped = zipfile.is_zipfile(self.path)  # raises on some damaged archives
        except zipfile.BadZipFile:
            mapped = False  # torch.load below reports the damage
        try:
            with warnings.catch_warnings():
                # a damaged file's first byte reads as an odd "pickle protocol": torch warns
                # before failing, and the error below says it better
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mapped)
            return loaded, mapped
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{self.path}: refused to unpickle: the file holds objects other than tensors "
                "and plain containers, and modelsoup only loads pickles with "
                "torch.load(weights_only=True), which never runs code from the file. If you "
                "trust it, load it yourself and re-save model.state_dict() (or use "
                f"safetensors). Detail: {str(e).splitlines()[0]}"
            ) from e
        except Exception as e:  # torch raises many types for damaged files
            raise CheckpointError(
                f"{self.path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); it may be truncated or not a "
                "torch.save file"
            ) from e

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def layout(self) -> Layout:
        return self._layout

    origin = NO_ORIGIN  # a plain file: no folder, nothing derived

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def get(self, name: str) -> torch.Tensor:
        return self.read(name).view(self._layout.spec(name).shape)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        t = self._tensors[self._layout.canonical(name)]
        start, stop = flat_range(self._layout.spec(name), start, stop)
        if not t.is_contiguous():  # rare (a saved transpose): copy, nothing to release
            return t.contiguous().reshape(-1)[start:stop].clone()
        src = t.reshape(-1)[start:stop]
        if not self._mapped:
            return src
        out = src.clone()
        _release_pages(src)
        return out

    @property
    def storage_format(self) -> str:
        return "pytorch" + ("" if self._mapped else " (legacy, loaded whole)")

    def __repr__(self) -> str:
        return f"TorchFile({str(self.path)!r})"


def open_file(path: Path, key: str | None) -> SafetensorsFile | TorchFile:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path, key)
    # Unknown suffix: tell the formats apart by their first bytes.
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch.save) or a raw pickle
        return TorchFile(path, key)
    if len(head) == 9 and head[8:9] == b"{":
        return SafetensorsFile(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected .safetensors, a PyTorch file "
        f"({', '.join(TORCH_SUFFIXES)}) or a Hugging Face model folder"
    )
