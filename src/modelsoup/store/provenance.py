"""What every run folder records: the command, its arguments, the versions, the inputs'
fingerprints and the evaluator's identity (``args.json``), written atomically."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.fingerprint import fingerprint
from ..checkpoints.ingredients import Ingredient
from ..checkpoints.save import atomic_output
from ..evaluators.distributed import world
from ..evaluators.protocols import identity_of
from ..version import package_version


def versions() -> dict[str, str]:
    """Versions of what produced a result, for the run folder."""
    out = {
        "modelsoup": package_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }
    for mod in ("safetensors", "numpy", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional, or broken: not worth failing a run over
            continue
    return out


def strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: strict JSON has no
    NaN, and a reader in another language rejects the bare ``NaN`` Python writes."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON (no NaN: see `strict`) atomically (temporary file, then
    rename); only rank 0 writes."""
    if world()[0] != 0:
        return
    text = json.dumps(strict(obj), indent=2, default=str, allow_nan=False)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text + "\n")


def inputs_record(ingredients: Sequence[Ingredient]) -> list[dict[str, Any]]:
    """``[{"source", "fingerprint"}]`` of the inputs (see `fingerprint`)."""
    return [{"source": i.source, "fingerprint": fingerprint(i)} for i in ingredients]


def record_run(
    run_dir: str | Path,
    command: str,
    *,
    args: Mapping[str, Any] | None = None,
    inputs: Sequence[Ingredient] = (),
    evaluator: Any = None,
) -> dict[str, Any]:
    """Write ``run_dir/args.json``: the command, the resolved arguments, the versions,
    the inputs with their fingerprints and the evaluator's identity (None without one).
    Returns what was written."""
    record = {
        "command": command,
        **dict(args or {}),
        "inputs": inputs_record(inputs),
        "evaluator": identity_of(evaluator) if evaluator is not None else None,
        "versions": versions(),
    }
    write_json(Path(run_dir) / "args.json", record)
    return record


def model_card(provenance: dict[str, Any]) -> str:
    """A short model card for a merged folder: method, inputs, parameters, version."""
    params = {
        k: v for k, v in provenance.items()
        if k not in ("recipe", "modelsoup", "ingredients", "inputs", "versions", "ratios",
                     "clamped")
    }  # fmt: skip
    lines = [
        "---",
        "tags:",
        "- merge",
        "- modelsoup",
        "---",
        f"# {provenance['recipe']} merge",
        "",
        f"Made with modelsoup {provenance['modelsoup']} by the `{provenance['recipe']}` merge of:",
        "",
        *(
            [
                f"- `{e['source']}`: {e['role']}"
                + (f", weight {e['weight']:g}" if "weight" in e else "")
                for e in provenance["inputs"]
            ]
            if "inputs" in provenance
            else [f"- `{s}`" for s in provenance["ingredients"]]
        ),
        "",
        "Parameters:",
        "",
        "```json",
        json.dumps(params, default=str, indent=2),
        "```",
        "",
        "The full record is in `modelsoup.json`.",
    ]
    return "\n".join(lines) + "\n"
