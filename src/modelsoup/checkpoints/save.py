"""Writing ingredients (soups) to disk: safetensors, PyTorch files, Hugging Face folders.

Every writer streams: it asks the ingredient for one chunk at a time and writes it, so
saving a lazy soup costs one chunk of memory (PyTorch files are the exception: torch.save
needs the whole state dict). Outputs appear atomically: data goes to a hidden temporary
name beside the output and is renamed into place only when complete, so an interrupted
run never leaves a half-written file under the output name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import SoupError, option
from .ingredients import ALIASES_METADATA_KEY, TORCH_SUFFIXES, Ingredient
from .layout import SAFETENSORS_CODES, Layout
from .stream import materialize, stream_chunks

DEFAULT_MAX_SHARD_SIZE = "5GB"


def parse_size(text: str | int) -> int:
    """Bytes from ``"5GB"``, ``"500MB"``, ``"2GiB"`` or an int (GB = 10**9, as transformers)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", text.upper())
    if not m:
        raise SoupError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB")
    unit = m.group(2) or "B"
    base = 1024 if "I" in unit else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("B").rstrip("I")]
    return int(float(m.group(1)) * base**power)


def _write_order(layout: Layout) -> list[str]:
    """Stored names ordered for a safetensors file: widest dtype first (stable).

    The format forbids gaps between tensors, so sorting by item size is what keeps
    every tensor aligned to its own item size for zero-copy readers.
    """
    return sorted(layout.specs, key=lambda n: -layout.specs[n].dtype.itemsize)


def _preallocate(f: BinaryIO, size: int) -> None:
    """Reserve the file's blocks up front: a full disk fails before any work, and the
    filesystem allocates one extent instead of growing the file write by write."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot preallocate: write as usual
        raise


WRITEBACK_BYTES = 64 << 20


def _start_writeback(f: BinaryIO, offset: int, length: int) -> None:
    """Hand a written range to the disk now (``POSIX_FADV_DONTNEED`` starts writeback of
    dirty pages and drops them once clean), so that writing overlaps the arithmetic, the
    final fsync has little left to do, and the soup does not fill the page cache."""
    if hasattr(os, "posix_fadvise"):
        f.flush()
        os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_DONTNEED)


def _write_safetensors(
    ing: Ingredient, names: list[str], f: BinaryIO, metadata: Mapping[str, str], bar
) -> None:
    layout = ing.layout
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in names:
        spec = layout.specs[name]
        header[name] = {
            "dtype": SAFETENSORS_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    _preallocate(f, 8 + len(raw) + offset)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    start = written = f.tell()
    for name, _, t in stream_chunks(ing, names):
        assert t.dtype == layout.specs[name].dtype and t.dim() == 1, (name, t.dtype, t.shape)
        f.write(memoryview(t.view(torch.uint8).numpy()))
        n = t.numel() * t.dtype.itemsize
        written += n
        bar.update(n)
        if written - start >= WRITEBACK_BYTES:
            _start_writeback(f, start, written - start)
            start = written


def _metadata(layout: Layout, names: list[str], extra: Mapping[str, str] | None) -> dict[str, str]:
    meta = {"format": "pt", **(extra or {})}
    aliases = {a: t for a, t in layout.aliases.items() if t in names}
    if aliases:
        meta[ALIASES_METADATA_KEY] = json.dumps(aliases)
    return meta


def check_output(
    path: Path, inputs: tuple[Path, ...], force: bool, *, what: str = "output"
) -> None:
    """Refuse an output (``what``: also "run folder") that is an input, holds an input, or
    lies inside an input folder; and an existing output without ``force``. A symbolic
    link at ``path``, even one that points nowhere, counts as existing."""
    out = path.resolve()
    for p in inputs:
        src = p.resolve()
        if out == src or out in src.parents:
            raise SoupError(f"{what} {path} would overwrite the input {p}; choose another path")
        if src.is_dir() and src in out.parents:
            raise SoupError(
                f"{what} {path} lies inside the input folder {p}; inputs are never modified: "
                f"write the {what} elsewhere"
            )
    if force:
        return
    if path.is_symlink() and not path.exists():
        raise SoupError(
            f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
            f"remove the link, or pass {option('force', True)} to replace it"
        )
    if path.exists():
        raise SoupError(f"{what} {path} exists; pass {option('force', True)} to replace it")


@contextlib.contextmanager
def atomic_output(path: Path, *, force: bool, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file or folder is
    removed and ``path`` is untouched. A replaced output (``force``) is swapped in with
    ``os.replace`` for files; for folders the old one is moved aside, the new one moved
    in, and the old one deleted.
    """
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SoupError(f"cannot create the output folder {parent}: {e.strerror}") from e
    tmp = parent / f".{path.name}.modelsoup-tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        _move_into_place(tmp, path, force=force, folder=folder)
        _fsync_dir(parent)
    except OSError as e:  # read-only folder, disk full, ...: nothing was written
        where = f" ({e.filename})" if e.filename else ""
        raise SoupError(f"cannot write {path}: {e.strerror or e}{where}") from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _move_into_place(tmp: Path, path: Path, *, force: bool, folder: bool) -> None:
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise SoupError(f"output {path} exists and is {kind}; remove it or choose another path")
    if not folder:
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if path exists: no silent overwrite in a race
        except FileExistsError as e:
            raise SoupError(
                f"output {path} appeared while writing; pass {option('force', True)}"
            ) from e
        except OSError:  # file systems without hard links
            if path.exists():
                raise SoupError(f"output {path} exists; pass {option('force', True)}") from None
            os.rename(tmp, path)
        return
    if path.exists():
        if not force:
            raise SoupError(f"output {path} exists; pass {option('force', True)} to replace it")
        old = path.parent / f".{path.name}.modelsoup-old-{secrets.token_hex(4)}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)


def _fsync_tree(p: Path) -> None:
    files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
    for q in files:
        fd = os.open(q, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(p: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _progress(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
        delay=0.5,  # no bar for work that ends before it would be read
    )


def save_safetensors(
    ingredient: Ingredient,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Stream ``ingredient`` into one ``.safetensors`` file, atomically.

    Tied names are stored once, the others recorded in the metadata under
    ``modelsoup.aliases`` (modelsoup restores them on reading; safetensors'
    ``load_model`` and ``from_pretrained`` re-tie them from the model).
    """
    path = Path(path)
    check_output(path, ingredient.files, force)
    layout = ingredient.layout
    names = _write_order(layout)
    with (
        atomic_output(path, force=force) as tmp,
        open(tmp, "wb") as f,
        _progress(layout.nbytes, progress, f"writing {path.name}") as bar,
    ):
        _write_safetensors(ingredient, names, f, _metadata(layout, names, metadata), bar)
    return path


def save_torch(
    ingredient: Ingredient, path: str | os.PathLike, *, force: bool = False, progress: bool = False
) -> Path:
    """Write a PyTorch state dict file (``torch.save``), atomically; ties are kept.

    Unlike the other writers this holds the whole state dict in memory.
    """
    path = Path(path)
    check_output(path, ingredient.files, force)
    with atomic_output(path, force=force) as tmp:
        state = materialize(ingredient)
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch reports a failed write (a full disk) this way
            raise OSError(
                f"torch.save could not write the file (is the disk full?): {e}".split("\n")[0]
            ) from e
    return path


def save_hf_folder(
    ingredient: Ingredient,
    path: str | os.PathLike,
    template: Any,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    metadata: Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = False,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a Hugging Face model folder: weights as safetensors, sharded like
    ``save_pretrained`` when larger than ``max_shard_size``, plus the config and tokenizer
    files of ``template`` (its ``load_files``: the first ingredient's folder's, or a
    realigned vocabulary's config and tokenizer). Atomic."""
    path = Path(path)
    check_output(path, ingredient.files, force)
    limit = parse_size(max_shard_size)
    layout = ingredient.layout
    shards: list[list[str]] = [[]]
    size = 0
    for name, spec in layout.specs.items():  # model order, like save_pretrained
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += spec.nbytes
    n = len(shards)
    files = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    with (
        atomic_output(path, force=force, folder=True) as tmp,
        _progress(layout.nbytes, progress, f"writing {path.name}") as bar,
    ):
        for fname, names in zip(files, shards):
            names = sorted(names, key=lambda x: -layout.specs[x].dtype.itemsize)
            with open(tmp / fname, "wb") as f:
                _write_safetensors(ingredient, names, f, _metadata(layout, names, metadata), bar)
        if n > 1:
            index = {
                "metadata": {"total_size": layout.nbytes},
                "weight_map": {
                    name: fname for fname, names in zip(files, shards) for name in sorted(names)
                },
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        for src in template.origin.load_files:  # checked when the folder was opened
            shutil.copy2(src, tmp / src.name)
        for fname, text in (extra_files or {}).items():  # the record and model card
            (tmp / fname).write_text(text)
    return path


def save(
    ingredient: Ingredient,
    path: str | os.PathLike,
    *,
    template: Ingredient | None = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    progress: bool = False,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``ingredient`` where ``path`` says: ``.safetensors`` file, PyTorch file
    (``.pt``/``.pth``/``.bin``) or, for a path without suffix, a Hugging Face folder
    modelled on ``template`` (which must then be a Hugging Face folder ingredient, or a
    LoRA adapter: its base's folder is the model).

    The output is written atomically, never replaces an existing path unless ``force``,
    and is never one of the ingredient's own input files. ``extra_files`` (name -> text)
    go into a folder output; file outputs carry ``metadata`` only.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return save_safetensors(ingredient, path, metadata=metadata, force=force, progress=progress)
    if path.suffix in TORCH_SUFFIXES:
        return save_torch(ingredient, path, force=force, progress=progress)
    if path.suffix:
        raise SoupError(
            f"output {path}: unknown suffix {path.suffix!r}; write .safetensors, .pt, or a "
            "folder name without suffix (for Hugging Face folder inputs)"
        )
    if template is not None:
        template = template.origin.base or template  # an adapter's folder: its base's
    if template is None or template.origin.folder is None:
        raise SoupError(
            f"output {path} has no suffix, so it would be a Hugging Face folder, but the "
            "first ingredient is not one; name the output *.safetensors or *.pt"
        )
    return save_hf_folder(
        ingredient,
        path,
        template,
        max_shard_size=max_shard_size,
        metadata=metadata,
        force=force,
        progress=progress,
        extra_files=extra_files,
    )
