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
