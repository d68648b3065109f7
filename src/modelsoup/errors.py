"""The errors modelsoup raises for problems the user can fix.

Every error is a `SoupError` (a `ValueError`), so a caller can catch the project's
errors in one place; the CLI turns them into a one-paragraph message and exit code 2.
Messages name the file, the tensor and the fix.

A message names what the user sets with `option` ("pass {option('force')}"): a Python
caller reads the parameter (``force=True``), the command line its flag (``--force``),
because the CLI installs its spelling (`spell_options`) while it runs. So the library
speaks in parameters and the CLI in flags, with one remedial text.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator

_MARK = re.compile("\\x00([A-Za-z_][A-Za-z0-9_]*)\\x01([^\\x00\\x01]*)\\x01([^\\x00]*)\\x00")
_TRUE = "\x02"
_Spell = Callable[[str, str | None, str | None], str]
_SPELLING: contextvars.ContextVar[_Spell | None] = contextvars.ContextVar(
    "modelsoup_option_spelling", default=None
)


def option(name: str, value: object = None, *, flag: str | None = None) -> str:
    """The parameter ``name`` (with ``value``) as a message names it: ``name=value`` for
    a Python caller, the command line's flag (``--name value``; ``flag`` where the
    command's option has another name) under `spell_options`."""
    text = _TRUE if value is True else "" if value is None else str(value)
    return f"\x00{name}\x01{text}\x01{flag or ''}\x00"


def _python(name: str, value: str | None, flag: str | None = None) -> str:
    if value is None:
        return name
    if value == _TRUE:
        return f"{name}=True"
    try:
        float(value)
        return f"{name}={value}"
    except ValueError:
        return f"{name}={value!r}"


def render(text: str) -> str:
    """``text`` with each `option` spelled for the caller (Python, or the CLI's)."""
    spell = _SPELLING.get() or _python
    return _MARK.sub(lambda m: spell(m.group(1), m.group(2) or None, m.group(3) or None), text)


@contextlib.contextmanager
def spell_options(spell: Callable[[str, str | None, str | None], str]) -> Iterator[None]:
    """While inside, messages spell each option with ``spell(name, value, flag)`` (value
    None: none given, `is_switch`: a switch set to True; flag: the call site's own)."""
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)


def is_switch(value: str | None) -> bool:
    """Whether an `option` value says "set this switch" (``option("force", True)``)."""
    return value == _TRUE


class SoupError(ValueError):
    """Base class of every error caused by the user's inputs, options or paths."""

    def __str__(self) -> str:
        return render(super().__str__())


class CheckpointError(SoupError):
    """A checkpoint cannot be read: unknown format, corrupt or truncated file, unsafe pickle."""


class MismatchError(SoupError):
    """Ingredients disagree: tensor names, shapes, dtypes, or integer tensors that differ."""


class NonFiniteError(SoupError):
    """An ingredient holds NaN or Inf in a floating tensor."""
