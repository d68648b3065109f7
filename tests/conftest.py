import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> list[str]:
    """Five fine-tunes of one tiny "pretrained" base (tinytask.py), learning rates 1e-3 to
    0.2 (the last one breaks), as safetensors paths. Modules that need another sweep
    define their own `sweep`."""
    import tinytask

    folder = tmp_path_factory.mktemp("cli-sweep")
    lrs = [3e-3, 1e-2, 3e-2, 1e-3, 2e-1]
    return [str(p) for p in tinytask.save_sweep(folder, lrs, base_steps=60, steps=80, seed0=10)]


@pytest.fixture(scope="session")
def sweep_with_base(tmp_path_factory) -> tuple[str, list[str]]:
    """A saved "pretrained" base and three fine-tunes of it (tinytask.py): the base's path
    and the fine-tunes' paths, for recipes that need theta0."""
    import tinytask

    folder = tmp_path_factory.mktemp("recipes")
    paths = tinytask.save_sweep(
        folder, [3e-3, 1e-2, 5e-3], base_steps=40, steps=40, seed0=0, save_base=True
    )
    return str(folder / "base.safetensors"), [str(p) for p in paths]


@pytest.fixture
def importable(monkeypatch):
    """tests/ importable here and in subprocesses (tinytask's model and data)."""
    tests = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests)
    monkeypatch.setenv("PYTHONPATH", f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
