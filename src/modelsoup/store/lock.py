"""One run at a time in a run folder: an exclusive lock, held while the run lasts.

Two runs on one folder would both do all the work and write every journal event twice.
The lock is ``flock`` on ``FOLDER/.lock``, which holds the holder's process id for the
message; the kernel releases it when the process ends, however it ends, so a killed run
leaves no stale lock. Only rank 0 of a torchrun job takes it (``RANK``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import SoupError, option

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the run folder's lock (creating the folder) or raise `SoupError` at once,
    naming the process that holds it."""
    folder = Path(folder)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SoupError(f"cannot write the run folder {folder}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SoupError(
                f"the run folder {folder} is in use by another modelsoup run (process "
                f"{holder}); wait for it to end, or give another {option('run_dir')}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
