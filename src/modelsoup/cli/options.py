"""Options shared by the commands, each declared once (argparse parent parsers), and the
steps every command shares: opening ingredients, building the evaluator, saving a soup
with its provenance."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import parse_dtype
from ..checkpoints.read import open_ingredient
from ..checkpoints.save import DEFAULT_MAX_SHARD_SIZE, check_output, parse_size
from ..errors import SoupError
from ..evaluators.distributed import init_distributed, resolve_device, world
from ..jobs.run_folders import input_paths
from ..ops.arithmetic import INTEGER_POLICIES
from ..ops.checks import check_distinct


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _size(text: str) -> str:
    """argparse type: a size parse_size accepts, checked before any work starts."""
    try:
        parse_size(text)
    except SoupError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


SEED_MAX = 2**63 - 1
BIG = 2**20  # the most batch rows, tokens per example, adapter rank... a command takes


def number(
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    option: str = "the value",
) -> Any:
    """argparse type: a finite number of ``kind`` within [``low``, ``high``] (``low``
    excluded with ``open_low``), checked at parse time so that no bad value reaches the
    work: a usage error, exit 2."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{option}: {text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{option} must be finite, got {text}")
        if low is not None and (value <= low if open_low else value < low):
            bound = f"more than {low:g}" if open_low else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{option} must be {bound}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{option} must be at most {high:g}, got {text}")
        return value

    return parse


KEY = _parent()
KEY.add_argument(
    "--key",
    default=None,
    help="entry of a PyTorch checkpoint that holds the state dict, when it is "
    "not one of state_dict/model_state_dict/model/module/net",
)

KEY.add_argument(
    "--base-model",
    metavar="DIR",
    help="the base model folder of LoRA adapter ingredients (default: the adapters' "
    "base_model_name_or_path, when that is a local folder)",
)

READ = _parent()
READ.add_argument(
    "ingredients",
    nargs="+",
    metavar="INGREDIENT",
    help="checkpoints: .safetensors, .pt/.pth/.bin, Hugging Face model folders or "
    "*.index.json files",
)

QUIET = _parent()
QUIET.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

OUTPUT = _parent()
OUTPUT.add_argument(
    "-o",
    "--output",
    required=True,
    help="output: *.safetensors, *.pt, or a folder (Hugging Face inputs)",
)
OUTPUT.add_argument(
    "--max-shard-size",
    default=DEFAULT_MAX_SHARD_SIZE,
    type=_size,
    help="largest weight file of a folder output (default: 5GB)",
)
OUTPUT.add_argument(
    "--force",
    action="store_true",
    help="replace an existing output, and start afresh a run folder written by another run",
)
OUTPUT.add_argument(
    "--adapter-rank",
    type=number(int, 1, BIG, option="--adapter-rank"),
    metavar="R",
    help="write the soup as a PEFT LoRA adapter of rank R instead of the full model: on the "
    "adapters' base for LoRA adapter ingredients, on --base for full fine-tunes (truncated "
    "SVD of each linear layer's change to the base; the errors go to RUN/adapter.json)",
)
OUTPUT.add_argument(
    "--max-error",
    type=number(float, 0, 1, option="--max-error"),
    metavar="E",
    help="--adapter-rank on --base: store whole (modules_to_save) each module whose relative "
    "error at rank R is over E (default: none)",
)
OUTPUT.add_argument(
    "--run-dir",
    metavar="DIR",
    help="run folder: arguments, versions, inputs' fingerprints, evaluator identity, results "
    "(default: OUTPUT.run; a merge that runs no evaluator keeps none unless this is given: "
    "its record goes inside the output)",
)

INTEGERS = _parent()
INTEGERS.add_argument(
    "--integers",
    choices=INTEGER_POLICIES,
    default="error",
    help="integer/bool tensors (e.g. num_batches_tracked) are never averaged: 'error' "
    "(default) requires them equal, 'first' takes the first ingredient's",
)

NUMERIC = _parent()
NUMERIC.add_argument(
    "--accumulate",
    choices=["float32", "float64"],
    default="float32",
    help="dtype the sums are accumulated in (default: float32)",
)

COMPARE = _parent()
COMPARE.add_argument(
    "--compare",
    choices=["ge", "gt"],
    default="ge",
    help="keep a candidate whose held-out score is >= the current one's (ge, the paper) "
    "or only > (gt, the paper's released code)",
)

EVAL = _parent()
EVAL.add_argument(
    "--model",
    metavar="MODULE:FACTORY",
    help="function returning the nn.Module the checkpoints belong to "
    "(module:function or path/to/file.py:function)",
)
EVAL.add_argument(
    "--data",
    metavar="MODULE:FUNCTION|FILE",
    help="function returning the held-out Dataset, or a dict of named splits "
    "(Datasets of (input, label)); for the built-in evaluators. With --task: a table file",
)
EVAL.add_argument(
    "--evaluator",
    default=None,
    metavar="accuracy|loss|acc_norm|MODULE:FUNCTION",
    help="'accuracy' (default; with --task causal-lm: 'loss', the only score there) or "
    "'loss' on --data ('acc_norm' with --task multiple-choice), or your function: called "
    "with the model (state loaded) if --model is given, else with the state dict; returns "
    "a float, higher is better",
)
EVAL.add_argument(
    "--split", default="val", help="the held-out split that drives every choice (default: val)"
)
EVAL.add_argument(
    "--task",
    choices=["text-classification", "image-classification", "causal-lm", "multiple-choice"],
    help="built-in Hugging Face evaluator: AutoModelFor... from the first ingredient's "
    "config.json, scored on the table --data (CSV/TSV/JSON lines/Parquet; causal-lm also "
    "reads a .txt file, one example per line, and scores the token-weighted loss; "
    "multiple-choice reads JSON lines {context, choices, gold} and scores lm-eval's acc, "
    "or acc_norm with --evaluator acc_norm)",
)
EVAL.add_argument(
    "--lm-eval",
    metavar="TASK",
    help="score each soup with lm-evaluation-harness on TASK (a task name lm-eval knows, or "
    "a local task YAML): the model from the first ingredient's config.json, wrapped in "
    "lm-eval's HF class. Any task (generation, exact match); no early rejection",
)
EVAL.add_argument(
    "--lm-eval-metric",
    metavar="NAME",
    help="--lm-eval: the metric to select on, one the task declares (default: its first); "
    "negated when lm-eval says lower is better",
)
EVAL.add_argument(
    "--trust-task-code",
    action="store_true",
    help="--lm-eval: let the task run its code (the modules its !function tags name, in "
    "the task file or any file it includes; a dataset's trust_remote_code). Without it "
    "such a task is refused, naming the file and the function (docs/safety.md)",
)
EVAL.add_argument(
    "--lm-eval-limit",
    type=number(int, 1, 10**9, option="--lm-eval-limit"),
    metavar="N",
    help="--lm-eval: score the first N examples only (lm-eval's --limit)",
)
EVAL.add_argument(
    "--eval-dtype",
    choices=["float32", "bfloat16", "float16"],
    help="--task: the dtype the model is evaluated in (default: float32; on GPUs bfloat16 "
    "halves memory); soups are always averaged in --accumulate",
)
EVAL.add_argument("--text-column", default="text", help="--task: text column (default: text)")
EVAL.add_argument("--text-pair-column", help="--task: second text column, for sentence pairs")
EVAL.add_argument("--label-column", default="label", help="--task: label column (default: label)")
EVAL.add_argument(
    "--image-column", default="image", help="--task: column of image paths (default: image)"
)
EVAL.add_argument(
    "--max-length",
    type=number(int, 1, BIG, option="--max-length"),
    help="--task: tokens per example, longer ones truncated (default: the smaller of 256 and "
    "the model's positions)",
)
EVAL.add_argument(
    "--batch-size",
    type=number(int, 1, BIG, option="--batch-size"),
    help="evaluation batch size (default: 256 examples; 8 for --task causal-lm and "
    "multiple-choice, where it counts sequences: each choice is one, so an example with "
    "more choices than this goes through the model in several passes)",
)
EVAL.add_argument(
    "--cache-budget",
    default="1GiB",
    type=_size,
    metavar="SIZE",
    help="--task causal-lm: the most logits an ensemble holds at once (default 1GiB). An "
    "ensemble's held-out set is run in chunks that fit it; a batch that alone needs "
    "more is refused. Nothing else keeps logits: scores keep each token's loss",
)
EVAL.add_argument(
    "--device",
    default="auto",
    help="auto (default: a GPU when there is one), cpu, cuda, cuda:1, ...",
)


# --- steps the commands share -----------------------------------------------------------


def open_all(
    paths: Sequence[str], key: str | None, minimum: int = 2, base_model: str | None = None
) -> list[Ingredient]:
    """Open the ingredients, at least ``minimum`` distinct ones (``base_model``: the base
    of LoRA adapters among them)."""
    if len(paths) < minimum:
        raise SoupError(
            f"a soup needs at least {minimum} ingredients, got {len(paths)} ({paths[0]}); "
            "did a glob match only one checkpoint?"
        )
    ingredients = [open_ingredient(p, key=key, base_model=base_model) for p in paths]
    check_distinct(ingredients)
    return ingredients


def wants_evaluator(args: argparse.Namespace) -> bool:
    """Whether the command line describes an evaluator (the default needs --model)."""
    return bool(
        args.model
        or args.data
        or args.task
        or getattr(args, "lm_eval", None)
        or args.evaluator is not None
    )


def make_evaluator(args: argparse.Namespace, first: Ingredient | None = None) -> Any:
    """The evaluator the evaluation options describe, on the resolved device (joining
    the torchrun process group when there is one)."""
    device = resolve_device(args.device)
    init_distributed(device)
    batch_size = args.batch_size or (8 if args.task in ("causal-lm", "multiple-choice") else 256)
    if getattr(args, "lm_eval", None):
        from ..evaluators.hf_lm import lm_eval_evaluator

        if args.task or args.model or args.data:
            raise SoupError(
                "--lm-eval scores the task lm-eval reads; drop --task, --model and --data"
            )
        assert first is not None
        return lm_eval_evaluator(
            first,
            args.lm_eval,
            metric=args.lm_eval_metric,
            batch_size=args.batch_size or 8,
            device=device,
            eval_dtype=parse_dtype(args.eval_dtype) if args.eval_dtype else None,
            limit=args.lm_eval_limit,
            trust_code=args.trust_task_code,
        )
    if args.task:
        from ..evaluators.hf import hf_evaluator

        if args.model:
            raise SoupError(
                "--task builds the model from the first ingredient's config; drop --model"
            )
        if not args.data:
            raise SoupError(f"--task {args.task} needs --data: a CSV, JSON lines or Parquet file")
        allowed = {
            "multiple-choice": ("accuracy", "acc_norm"),
            "causal-lm": ("loss",),
        }.get(args.task, ("accuracy", "loss"))
        if args.evaluator not in (None, *allowed):
            raise SoupError(
                f"--task {args.task} scores {' or '.join(allowed)}; drop --evaluator "
                f"{args.evaluator} or give one of those"
            )
        assert first is not None
        return hf_evaluator(
            args.task,
            first,
            args.data,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            image_column=args.image_column,
            max_length=args.max_length,
            metric=args.evaluator,  # None: the task's own
            batch_size=batch_size,
            device=device,
            eval_dtype=parse_dtype(args.eval_dtype) if args.eval_dtype else None,
        )
    from ..evaluators.functions import build_evaluator

    return build_evaluator(
        model=args.model,
        data=args.data,
        evaluator=args.evaluator or "accuracy",
        split=args.split,
        batch_size=batch_size,
        device=device,
    )


def cache_budget(args: argparse.Namespace) -> int:
    """``--cache-budget`` in bytes."""
    return parse_size(args.cache_budget)


def resolved(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-able data (without the command's function and its
    run folders)."""
    return {k: v for k, v in vars(args).items() if k not in ("run", "folders")}


def is_rank0() -> bool:
    return world()[0] == 0


def run_dir(args: argparse.Namespace) -> Path:
    """The run folder: ``--run-dir``, or ``OUTPUT.run`` beside the output."""
    out = Path(args.output)
    return Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")


def check_writable(
    args: argparse.Namespace, inputs: Sequence[Ingredient], *, run_folder: bool = True
) -> Path:
    """Before any work: refuse an output that exists (without --force) or that is, holds
    or lies in an input, and (``run_folder``) claim the run folder
    (`modelsoup.jobs.run_folders.RunFolders.claim`); returns the output path. An adapter
    output always has a run folder (its modules' errors)."""
    out = Path(args.output)
    if getattr(args, "max_error", None) is not None and getattr(args, "adapter_rank", None) is None:
        raise SoupError("--max-error applies to --adapter-rank on --base; add --adapter-rank R")
    check_output(out, input_paths(inputs), args.force)
    if run_folder or getattr(args, "adapter_rank", None) is not None:
        args.folders.claim(run_dir(args), inputs, args.force)
    return out
