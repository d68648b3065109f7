"""The run folders one run writes, each claimed before any work and held to the end.

A run folder holds a run's journal, caches and records. `RunFolders.claim` refuses a
folder in an input, or one that holds files modelsoup did not write (it has no ``.lock``,
the mark every run folder carries), unless ``force``; then it takes the folder's lock
(`modelsoup.store.lock.run_lock`), so a second run on it stops at once. Closing
`RunFolders` releases every lock; closing it after a refusal first removes each folder it
created that holds nothing but its lock, so a refused run writes nothing::

    with RunFolders() as folders:
        folders.claim(Path("runs/greedy"), ingredients)
        greedy_run(...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.save import check_output
from ..errors import SoupError, option
from ..store.lock import LOCK_NAME, run_lock


def input_paths(inputs: Sequence[Ingredient]) -> tuple[Path, ...]:
    """Every file and folder the inputs are read from (never to be written)."""
    return tuple(f for i in inputs for f in i.files)


class RunFolders:
    """The run folders claimed by one run, locked until `close`."""

    def __init__(self) -> None:
        self._locks = contextlib.ExitStack()
        self._created: list[Path] = []

    def claim(self, folder: Path, inputs: Sequence[Ingredient] = (), force: bool = False) -> Path:
        """Refuse ``folder`` if it is, holds or lies in an input, or holds files modelsoup
        did not write (unless ``force``); then lock it until `close`; returns it."""
        check_output(folder, input_paths(inputs), True, what="run folder")
        if folder.is_dir() and not (folder / LOCK_NAME).exists() and not force:
            # another rank of the same torchrun may create the lock between the test above
            # and this listing: a lock is modelsoup's mark, never a foreign file
            found = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
            if found:
                listing = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
                raise SoupError(
                    f"{folder} holds files modelsoup did not write ({listing}); give a new or "
                    f"empty folder, or {option('force', True)} to write into it (files of the "
                    "same names are replaced)"
                )
        return self.hold(folder)

    def hold(self, folder: Path) -> Path:
        """Lock ``folder`` (created if missing) until `close`, without `claim`'s checks:
        for a folder this run already knows to be a run folder."""
        created = not folder.exists()
        self._locks.enter_context(run_lock(folder))
        if created and folder.exists():
            self._created.append(folder)
        return folder

    def close(self, refused: bool = False) -> None:
        """Release every lock; when ``refused``, first remove each folder this run created
        that holds nothing but its lock (the lock file unlinked while it is still held)."""
        if refused:
            for folder in self._created:
                try:
                    if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
                        (folder / LOCK_NAME).unlink(missing_ok=True)
                        folder.rmdir()
                except OSError:
                    pass  # another process wrote into it: it is no longer ours to remove
        self._created.clear()
        self._locks.close()

    def __enter__(self) -> RunFolders:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(refused=isinstance(value, SoupError))
