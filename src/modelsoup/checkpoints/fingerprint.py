"""Fingerprints of checkpoints and content hashes of states: what caches, journals and
run records key on.

A checkpoint's `fingerprint` covers every file it reads (path, size, mtime, ctime, inode
and a hash of the content); an in-memory state's `content_hash` covers its names,
dtypes, shapes and bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from .ingredients import Ingredient

# The content part of a fingerprint: files up to WHOLE_FILE bytes are hashed whole; larger
# ones by their first HEAD bytes (the safetensors header and first tensors), their last
# SAMPLE bytes and SAMPLES evenly spaced SAMPLE-byte chunks: about 2 MiB read per file.
WHOLE_FILE = 4 << 20
HEAD = 1 << 20
SAMPLE = 64 << 10
SAMPLES = 16

_memo: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    # ctime changes on every write to the inode (at the file system's clock tick) and
    # cannot be set back by os.utime: an overwrite in place that restores size and mtime
    # changes it even where the content sample misses the change.
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256(repr(key).encode())
    with open(path, "rb") as f:
        if st.st_size <= WHOLE_FILE:
            h.update(f.read())
        else:
            h.update(f.read(HEAD))
            span = st.st_size - SAMPLE
            for i in range(SAMPLES + 1):
                f.seek(HEAD + (span - HEAD) * i // SAMPLES)
                h.update(f.read(SAMPLE))
    _memo[key] = h.hexdigest()[:20]
    return _memo[key]


def fingerprint(ingredient: Ingredient) -> str | None:
    """A cheap identity of a checkpoint on disk: for each of its files, the resolved path,
    size, mtime, ctime and inode, and a hash of its content (whole up to 4 MiB, else its
    first MiB and 17 sampled 64 KiB chunks). None for in-memory ingredients (never cached
    by file; see `content_hash`). An ingredient derived from checkpoints (some tensors
    taken from another model, a vocabulary realigned) states how in ``derivation``, which
    the fingerprint covers too."""
    files = [Path(f) for f in ingredient.files if Path(f).is_file()]
    if not files:
        return None
    h = hashlib.sha256(ingredient.origin.derivation.encode())
    for f in files:
        h.update(_file_digest(f).encode())
    return h.hexdigest()[:20]


def content_hash(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes (for caching what was
    computed from an in-memory soup)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()[:20]


def state_key(state: Mapping[str, torch.Tensor]) -> str:
    """The cache key of an in-memory state: ``soup-<content_hash>``. An ingredient's
    entries are also linked under its state's key (`LogitCache.alias`), so a soup that
    equals an ingredient (a greedy soup that kept one model) is not evaluated again."""
    return f"soup-{content_hash(state)}"
