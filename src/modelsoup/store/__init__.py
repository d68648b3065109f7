"""Run folders: provenance (``args.json``), journals for resuming, the logit cache and
fingerprints, and the pipelines that run a recipe into a folder."""

from ..checkpoints.fingerprint import content_hash, fingerprint
from .allocator import keep_freed_memory
from .cache import LogitCache
from .journal import Journal, journal_at
from .provenance import record_run, versions, write_json
from .stages import Stage, Stages

__all__ = [
    "Journal",
    "LogitCache",
    "Stage",
    "Stages",
    "content_hash",
    "fingerprint",
    "journal_at",
    "keep_freed_memory",
    "record_run",
    "versions",
    "write_json",
]
