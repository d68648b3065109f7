"""A local lm-eval task YAML and every file it brings: its includes, the Python modules
its ``!function`` tags name, and the data files it reads.

`read_task` reads them as lm-eval 0.4 does (an ``include`` is a path relative to the
file that names it, or absolute; the including file's keys win) without running
anything: a ``!function utils.fn`` tag is recorded, not imported. The task's code runs
only when the caller allows it (``--trust-task-code``, see docs/safety.md); otherwise
`TaskFiles.check_code` refuses the task, naming the file and the function.
`TaskFiles.digest` hashes every file that decides the task's score, so a changed
include, data file or function module is a changed evaluator.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.yaml_files import read_yaml
from ..errors import SoupError, option

# datasets' packaged builders: without data files they read every file of their kind
# under the working directory
PACKAGED = ("json", "csv", "parquet", "text", "arrow", "pandas", "xml", "sql", "webdataset",
            "imagefolder", "audiofolder", "videofolder")  # fmt: skip
MAX_FILES = 64  # YAML files a task may include, transitively
MAX_DATA_FILES = 10_000  # files under the data paths a task names
TRUST = option("trust_code", True)


@dataclass(frozen=True)
class TaskFunction:
    """A ``!function MODULE.NAME`` tag of the task YAML ``file``."""

    file: Path
    spec: str

    @property
    def module(self) -> Path | None:
        """The module file lm-eval imports (next to ``file``), if it is there."""
        mod, _, _ = self.spec.rpartition(".")
        path = self.file.parent / f"{mod.replace('.', '/')}.py"
        return path if mod and path.is_file() else None


def _loader(file: Path, found: list[TaskFunction]) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def function(loader: Any, node: Any) -> TaskFunction:
        tag = TaskFunction(file, str(loader.construct_scalar(node)))
        found.append(tag)
        return tag

    Loader.add_constructor("!function", function)
    return Loader


@dataclass
class TaskFiles:
    """The task YAML ``path``, its merged configuration and the files it brings."""

    path: Path
    config: dict[str, Any]
    yamls: list[Path] = field(default_factory=list)
    functions: list[TaskFunction] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config["task"]

    def data(self) -> list[Path]:
        """The local files the dataset options name (dataset_path, and dataset_kwargs'
        data_files and data_dir), relative to the working directory as `datasets`
        reads them; a name that is no local path (a builder such as ``json``) is none."""
        kwargs = self.config.get("dataset_kwargs")
        kwargs = kwargs if isinstance(kwargs, dict) else {}
        named = [self.config.get("dataset_path"), kwargs.get("data_dir")]
        files = kwargs.get("data_files")
        if isinstance(files, dict):
            files = list(files.values())
        named += files if isinstance(files, list) else [files]
        out: list[Path] = []
        for entry in named:
            for item in entry if isinstance(entry, list) else [entry]:
                if isinstance(item, str) and item:
                    out += [Path(p) for p in sorted(glob.glob(item))]
        return sorted(set(out))

    def check_code(self, trust: bool) -> None:
        """Refuse a task that runs code (a ``!function``, or a dataset's
        ``trust_remote_code``) unless ``trust``."""
        if trust:
            return
        for f in self.functions:
            where = f" (the module {f.module})" if f.module else ""
            raise SoupError(
                f"{f.file}: '!function {f.spec}'{where}: lm-eval would import and run this "
                f"code; read it, then pass {TRUST} to run it"
            )
        kwargs = self.config.get("dataset_kwargs")
        if isinstance(kwargs, dict) and kwargs.get("trust_remote_code"):
            raise SoupError(
                f"{self.path}: dataset_kwargs.trust_remote_code lets the dataset run its own "
                f"code; pass {TRUST} to allow it"
            )

    def digest(self) -> str:
        """sha256 of every file that decides the score: the YAMLs, the function modules
        and the data files (each file's path and content)."""
        h = hashlib.sha256()
        modules = [m for f in self.functions if (m := f.module) is not None]
        specs = sorted({f.spec for f in self.functions})
        h.update(repr(specs).encode())
        for role, paths in (("yaml", self.yamls), ("code", modules), ("data", self.data())):
            for path in _files(paths):
                h.update(f"{role}:{path.resolve()}\0".encode())
                _hash_file(h, path)
        return h.hexdigest()[:16]


def _files(paths: list[Path]) -> Iterator[Path]:
    n = 0
    for p in sorted(set(paths)):
        inner = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in inner:
            n += 1
            if n > MAX_DATA_FILES:
                raise SoupError(f"{p}: over {MAX_DATA_FILES} files under the task's data paths")
            yield q


def _hash_file(h: Any, path: Path) -> None:
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise SoupError(f"{path}: cannot read this file of the task: {e}") from e


def _load(path: Path, seen: list[Path], found: list[TaskFunction]) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in seen:
        raise SoupError(f"{path}: includes itself (through {seen[-1]}); remove the cycle")
    if len(seen) >= MAX_FILES:
        raise SoupError(f"{path}: over {MAX_FILES} task files included")
    if not path.is_file():
        where = f" (included by {seen[-1]})" if seen else ""
        raise SoupError(f"{path}: no such task YAML{where}")
    seen.append(path)
    docs = read_yaml(path, _loader(path, found))
    cfg = docs[0] if len(docs) == 1 else None
    if not isinstance(cfg, dict):
        raise SoupError(f"{path}: a task YAML is one mapping (task: NAME, dataset_path, ...)")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str) or not inc:
            raise SoupError(f"{path}: include: a path to a YAML file, got {str(inc)[:60]!r}")
        sub = _load(path.parent / inc, seen, found)  # an absolute inc replaces the parent
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged


def read_task(path: str | Path) -> TaskFiles:
    """The task YAML ``path`` and what it includes and names (see the module); nothing
    is imported or run."""
    seen: list[Path] = []
    found: list[TaskFunction] = []
    config = _load(Path(path), seen, found)
    name = config.get("task")
    if not isinstance(name, str) or not name.strip() or len(name) > 256 or "\n" in name:
        raise SoupError(f"{path}: a task YAML needs a 'task: NAME' line (here or included), "
                        "NAME one line of at most 256 characters")  # fmt: skip
    kwargs = config.get("dataset_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise SoupError(f"{path}: dataset_kwargs must be a mapping (data_files: ...)")
    kwargs = kwargs or {}
    if (
        config.get("dataset_path") in PACKAGED
        and not kwargs.get("data_files")
        and not (kwargs.get("data_dir"))
    ):
        raise SoupError(
            f"{path}: dataset_path: {config['dataset_path']} names no file: give "
            "dataset_kwargs.data_files (without them datasets reads every such file under "
            "the working directory)"
        )
    return TaskFiles(Path(path).resolve(), config, seen, found)
