"""A tiny sweep of fine-tunes to try modelsoup on (seconds on a CPU).

A small MLP is "pretrained" on one synthetic classification task, then fine-tuned six
times on a related task with AdamW learning rates drawn log-uniformly from [1e-4, 3e-3],
like the paper's random hyperparameter search. The sweep, the model and the data are
those of ``modelsoup quickstart`` (`modelsoup_paper/quickstart.py`). Writes into OUTDIR:

    base.safetensors        the shared initialization θ0
    ft0..ft5.safetensors    the fine-tunes

The same file is also the `--model` and `--data` of the greedy and ensemble commands:

    modelsoup greedy OUTDIR/ft*.safetensors -o soup.safetensors \\
        --model examples/tiny_sweep.py:model --data examples/tiny_sweep.py:data

Usage: python examples/tiny_sweep.py OUTDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelsoup_paper.quickstart import data, make_sweep, model

__all__ = ["data", "model"]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    make_sweep(Path(sys.argv[1]))
