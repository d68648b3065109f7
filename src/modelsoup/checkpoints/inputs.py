"""What may be read from an input folder: regular files that resolve inside it.

A file in an input folder is read (or copied into a soup) only when it is a regular file
and, followed through any symbolic links, still inside the folder: a link to a file
elsewhere would publish that file with the soup, a FIFO hangs a reader and a device such
as /dev/zero exhausts memory. JSON is read with a size cap, and a parser failure
(including nesting deep enough to exhaust the recursion limit) is a `CheckpointError`
naming the file, never a traceback.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

# The largest JSON file read whole from an input folder (tokenizer.json of a 256k
# vocabulary is about 35 MB).
MAX_JSON_BYTES = 256 << 20


def regular_file(path: Path, folder: Path | None = None) -> Path:
    """``path`` if it is a regular file (through links) that resolves inside ``folder``
    (when given); else `CheckpointError` saying what it is and what to do."""
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) and folder is not None:
            target = path.resolve()
            if not target.is_relative_to(folder.resolve()):
                raise CheckpointError(
                    f"{path}: a symbolic link to {target}, outside {folder}; modelsoup reads "
                    "(and copies into a soup) only files inside an input folder: replace the "
                    "link by a copy of the file"
                )
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or special file"
        if stat.S_ISDIR(st.st_mode):
            kind = "a folder"
        raise CheckpointError(
            f"{path}: is {kind}, not a regular file; an input folder holds regular files only"
        )
    return path


def read_json(path: Path, folder: Path | None = None, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON in ``path`` (a regular file inside ``folder``, at most ``limit`` bytes)."""
    regular_file(path, folder)
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(
            f"{path}: {size} bytes of JSON, over the {limit >> 20} MiB modelsoup reads; is "
            "it the right file?"
        )
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise CheckpointError(f"{path}: not valid JSON ({why})") from e
