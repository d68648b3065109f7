"""Your own evaluator, subclassing nothing of modelsoup's.

modelsoup asks an evaluator only for what a recipe uses (see
`modelsoup.evaluators.protocols`). This one implements all of it, in plain PyTorch:
- ``evaluate(state, bar=..., strict=...)``: exact counts, and a stop as soon as the
  candidate cannot reach the bar, so greedy soups reject early;
- ``selection``, ``splits``, ``metric``, ``labels`` and ``logits``: ensembles, per-split
  scores, and ingredient scores from cached logits;
- ``identity(split)``: what the logits depend on, so caches and journals are keyed by it.

Run it: ``python examples/my_evaluator.py OUTDIR`` (after ``python examples/tiny_sweep.py
OUTDIR``) cooks the greedy soup of the sweep in OUTDIR/run, then cooks it again from the
cached logits.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from tiny_sweep import data, model

import modelsoup as ms


class TopOne:
    """Top-1 accuracy of ``net`` on ``splits`` ({name: (inputs [N, ...], labels [N])}),
    selecting on ``"val"``, in chunks of ``chunk`` examples."""

    selection = "val"
    metric = "accuracy"

    def __init__(self, net: torch.nn.Module, splits: Mapping[str, tuple], chunk: int = 50):
        self.net, self.data, self.chunk = net.eval(), dict(splits), chunk
        self.examples_run = 0  # for the curious: what early rejection saved

    @property
    def splits(self) -> list[str]:
        return list(self.data)

    def labels(self, split: str) -> torch.Tensor:
        return self.data[split][1]

    @torch.no_grad()
    def logits(self, state, splits) -> dict[str, torch.Tensor]:
        self.net.load_state_dict(state)
        return {s: self.net(self.data[s][0]) for s in splits}

    @torch.no_grad()
    def evaluate(self, state, *, bar=None, strict=False) -> ms.Evaluation:
        self.net.load_state_dict(state)
        x, y = self.data[self.selection]
        need = None if bar is None else bar.correct + int(strict)
        correct = 0
        for start in range(0, len(y), self.chunk):
            pred = self.net(x[start : start + self.chunk]).argmax(-1)
            correct += int((pred == y[start : start + self.chunk]).sum())
            seen = min(start + self.chunk, len(y))
            self.examples_run += seen - start
            if need is not None and correct + len(y) - seen < need:  # cannot reach the bar
                return ms.Evaluation(None, None, len(y), seen)
        return ms.Evaluation(correct / len(y), correct, len(y), len(y))

    def __call__(self, state) -> float:
        return self.evaluate(state).score

    def identity(self, split: str) -> dict:
        x, y = self.data[split]
        h = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        return {"model": "tiny_sweep.model", "data": h, "split": split}


def tensors() -> dict[str, tuple]:
    return {name: ds.tensors for name, ds in data().items()}


if __name__ == "__main__":
    sweep = Path(sys.argv[1])
    ingredients = [ms.open_ingredient(p) for p in sorted(sweep.glob("ft*.safetensors"))]
    # the greedy soup with your evaluator, recorded in a run folder (logit cache, journal)
    result, record = ms.greedy_run(ingredients, TopOne(model(), tensors()), sweep / "run")
    ms.save(result.soup, sweep / "greedy.safetensors", force=True)
    print(f"kept {record['kept']}, held-out {record['heldout']['score']:.4f}")
    cost = record["cost"]
    print(
        f"read {cost['scoring_reads']} checkpoints to score them; early rejection ran "
        f"{cost['heldout_examples']} of {cost['heldout_examples_without_early_rejection']} "
        "held-out examples"
    )
