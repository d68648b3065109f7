"""The journal: an append-only record of a run's decisions, for resuming after a kill."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import SoupError, option
from ..evaluators.distributed import world


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ, e.g. ``evaluator.data``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "the header"]


class Journal:
    """An append-only JSON-lines log of a run's decisions, for resuming after a kill.

    The first line records ``header`` (what identifies the run: ingredients, options).
    Reopening a journal whose header differs raises `SoupError` naming what changed: its
    decisions belong to another run (``restart=True`` starts it afresh instead). A last
    line cut short by a kill is ignored. Under ``torch.distributed``
    rank 0 reads and writes the file and sends the events to the other ranks.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], *, restart: bool = False):
        self.path = Path(path)
        self.header = json.loads(json.dumps(header, default=str))
        events: list[dict] = []
        if world()[0] == 0 and self.path.exists() and not restart:
            events = self._read()
        if world()[1] > 1:
            box = [events]
            torch.distributed.broadcast_object_list(box, src=0)
            events = box[0]
        self.events = events
        if world()[0] == 0 and not events:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text("")  # a fresh journal (a header-only stub left by a kill)
            except OSError as e:
                raise SoupError(f"cannot create the journal {self.path}: {e.strerror or e}") from e
            self.append({"event": "header", **self.header})
            self.events = []

    def _read(self) -> list[dict]:
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the text after the last newline is a cut line, or ""
        events = []
        for i, line in enumerate(complete):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SoupError(
                    f"{self.path}: line {i + 1} is not JSON; the journal is damaged: delete "
                    "it to start the run afresh"
                ) from e
        if not events:
            return []
        head = events[0]
        head = {k: v for k, v in head.items() if k != "event"}
        if head != self.header:
            changed = ", ".join(differences(head, self.header)[:6])
            raise SoupError(
                f"{self.path} belongs to another run: {changed} changed. Its decisions "
                f"do not hold for this one: rerun with {option('restart', True, flag='--force')} "
                f"to start the run afresh, or give another {option('run_dir')}"
            )
        if lines[-1]:  # drop the cut line, or the next append would join it
            with open(self.path, "r+") as f:
                f.truncate(len(text.encode()) - len(lines[-1].encode()))
        return events[1:]

    def append(self, event: Mapping[str, Any]) -> None:
        """Add one event durably (flushed and fsynced); only rank 0 writes."""
        if world()[0] != 0:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(event, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, a read-only folder: the run cannot go on
            raise SoupError(
                f"cannot write the journal {self.path}: {e.strerror or e}; free space or "
                f"give another {option('run_dir')}, then rerun to resume from what it holds"
            ) from e

    def find(self, **match: Any) -> dict | None:
        """The first earlier event whose fields equal ``match``."""
        for e in self.events:
            if all(e.get(k) == v for k, v in match.items()):
                return e
        return None


def journal_at(
    path: str | Path, *, restart: bool = False
) -> Callable[[Mapping[str, Any]], Journal]:
    """What a recipe is handed to open its journal: ``opener(header)`` is the `Journal` at
    ``path`` for the run that ``header`` identifies (``restart``: start it afresh)."""
    return lambda header: Journal(Path(path), header, restart=restart)
