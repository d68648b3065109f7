"""Writing a command's soup: the output with its provenance, the run record, or a LoRA
adapter of the soup (``--adapter-rank``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.save import save
from ..jobs.prepare import check_adapter_request
from ..store.provenance import model_card, record_run, versions, write_json
from ..version import package_version
from .options import is_rank0, resolved, run_dir

# A soup larger than this is announced (its size and path) before it is written.
ANNOUNCE_BYTES = 10**9


def save_soup(
    args: argparse.Namespace,
    soup: Ingredient,
    inputs: Sequence[Ingredient],
    recipe: str,
    *,
    evaluator: Any = None,
    summary: dict[str, Any] | None = None,
    record: bool = True,
    run_folder: bool = True,
    template: Ingredient | None = None,
    base: Ingredient | None = None,
    files: dict[str, str] | None = None,
    roles: Sequence[str] | None = None,
) -> Path:
    """Write the soup to ``--output`` with its provenance (and ``summary``) in the file's
    metadata, and the run record (``args.json``: arguments, versions, inputs'
    fingerprints, evaluator identity) in the run folder; ``record=False`` when a pipeline
    has written it already. Without ``run_folder`` (a merge that ran no evaluator) the
    record goes inside the output only: a folder output gets ``modelsoup.json`` and a
    README model card, as mergekit writes its config and card. ``template``: the model
    whose folder the soup's folder copies (default the first input); ``base``: what
    ``--adapter-rank`` adapts, for soups of full fine-tunes; ``files``: {name: text} written
    into a folder output over the template's (a config.json with another layer count);
    ``roles``: each input's part in the merge ("base", "model", "A", ...), recorded with
    it (and a model's weight, from ``summary["weights"]``)."""
    folder = run_dir(args)
    if getattr(args, "adapter_rank", None) is not None:
        return _save_adapter(args, soup, inputs, recipe, folder, evaluator, record, base)
    nbytes = soup.layout.nbytes
    if nbytes > ANNOUNCE_BYTES and is_rank0():  # say so before a long write starts
        print(f"writing {nbytes / 1e9:.1f} GB to {args.output}", file=sys.stderr, flush=True)
    provenance = {
        "recipe": recipe,
        "modelsoup": package_version(),
        "ingredients": [i.source for i in inputs],
        **({"inputs": input_roles(inputs, roles, (summary or {}).get("weights"))} if roles else {}),
        **({"run_dir": str(folder)} if run_folder else {"versions": versions()}),
        **(summary or {}),
    }
    text = json.dumps(provenance, default=str, indent=2)
    out = save(
        soup,
        args.output,
        template=template if template is not None else inputs[0],
        metadata={"modelsoup": json.dumps(provenance, default=str)},
        max_shard_size=args.max_shard_size,
        force=args.force,
        progress=not args.quiet,
        extra_files=(files or {})
        if run_folder
        else {**(files or {}), "modelsoup.json": text + "\n", "README.md": model_card(provenance)},
    )
    if record and run_folder:  # after the soup: an unwritable output is reported as such
        record_run(folder, recipe, args=resolved(args), inputs=inputs, evaluator=evaluator)
    return out


def input_roles(
    inputs: Sequence[Ingredient], roles: Sequence[str], weights: Any
) -> list[dict[str, Any]]:
    """Each input with its role, and the models their weights in order: so a record (and
    its model card) says which input is the base and which weight applies to which."""
    out: list[dict[str, Any]] = [{"source": i.source, "role": r} for i, r in zip(inputs, roles)]
    models = [e for e in out if e["role"] == "model"]
    if isinstance(weights, (list, tuple)) and len(weights) == len(models):
        for entry, w in zip(models, weights):
            entry["weight"] = w
    return out


def _save_adapter(
    args: argparse.Namespace,
    soup: Ingredient,
    inputs: Sequence[Ingredient],
    recipe: str,
    folder: Path,
    evaluator: Any,
    record: bool,
    base: Ingredient | None,
) -> Path:
    """``--adapter-rank``: the soup as a LoRA adapter, each module's error recorded: on
    the adapters' base for adapter ingredients, else on ``base`` (--base)."""
    from ..checkpoints.adapters import LoraAdapter, save_adapter
    from ..checkpoints.extract import extract_lora

    adapters = [i for i in inputs if isinstance(i, LoraAdapter)]
    check_adapter_request(args.output, inputs, base)
    whole: dict[str, str] = {}
    if adapters:
        errors, rank = save_adapter(
            soup, adapters, args.output, args.adapter_rank, force=args.force,
            progress=not args.quiet,
        )  # fmt: skip
    else:
        assert base is not None
        done = extract_lora(
            soup, base, args.output, args.adapter_rank, max_error=getattr(args, "max_error", None),
            force=args.force,
        )  # fmt: skip
        errors, rank, whole = done.errors, done.rank, done.whole
    if rank < args.adapter_rank:
        print(
            f"--adapter-rank {args.adapter_rank} is more than the modules' full rank; the "
            f"adapter is written at rank {rank}, which is exact",
            file=sys.stderr,
        )
    if record:
        record_run(folder, recipe, args=resolved(args), inputs=inputs, evaluator=evaluator)
    worst = max(errors.values(), default=0.0)
    write_json(
        folder / "adapter.json",
        {
            "rank": rank,
            "relative_frobenius_error": errors,
            "max_error": worst,
            "modules_to_save": whole,
        },
    )
    print(
        f"adapter of rank {rank}: {len(errors)} modules, relative Frobenius "
        f"error at most {worst:.2e} (per module in {folder / 'adapter.json'})"
    )
    if whole:
        print(f"{len(whole)} module(s) stored whole (modules_to_save): "
              + "; ".join(f"{m}: {why}" for m, why in list(whole.items())[:5]))  # fmt: skip
    return Path(args.output)
