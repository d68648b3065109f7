"""Run folders: provenance (``args.json``), journals for resuming, the logit cache and
fingerprints, and the pipelines that run a recipe into a folder."""

from .allocator import keep_freed_memory
from .cache import LogitCache, content_hash, fingerprint
from .journal import Journal
from .provenance import record_run, versions, write_json
from .stages import Stage, Stages

__all__ = [
    "Journal",
    "LogitCache",
    "Stage",
    "Stages",
    "content_hash",
    "fingerprint",
    "keep_freed_memory",
    "record_run",
    "versions",
    "write_json",
]
