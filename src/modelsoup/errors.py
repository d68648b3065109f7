"""The errors modelsoup raises for problems the user can fix.

Every error is a `SoupError` (a `ValueError`), so a caller can catch the project's
errors in one place; the CLI turns them into a one-paragraph message and exit code 2.
Messages name the file, the tensor and the fix.
"""

from __future__ import annotations


class SoupError(ValueError):
    """Base class of every error caused by the user's inputs, options or paths."""


class CheckpointError(SoupError):
    """A checkpoint cannot be read: unknown format, corrupt or truncated file, unsafe pickle."""


class MismatchError(SoupError):
    """Ingredients disagree: tensor names, shapes, dtypes, or integer tensors that differ."""


class NonFiniteError(SoupError):
    """An ingredient holds NaN or Inf in a floating tensor."""
