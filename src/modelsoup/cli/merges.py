"""One command per registered merge (`modelsoup.merges.registry.MERGES`), built from the
entry: its inputs, its weights, and one option per parameter. A parameter with a grid
may be left out when an evaluator is given: it is then chosen on the held-out split
(`merges.tune.tune`), every grid point's score going to the run folder. A merge run
without an evaluator has no run folder: its record goes inside the output."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from ..checkpoints.ingredients import Ingredient
from ..checkpoints.layout import DTYPE_NAMES, parse_dtype
from ..checkpoints.read import open_ingredient
from ..errors import SoupError
from ..jobs.pipelines import certify_soup
from ..merges import settings as st
from ..merges.per_tensor import per_tensor, varies
from ..merges.registry import Merge, Param
from ..merges.tune import tune
from ..ops.checks import check_distinct
from ..ops.running_mean import lazy_state
from ..ops.summary import human_bytes, human_count
from ..store.provenance import write_json
from . import certified as cf
from . import choices as c
from . import options as o
from .output import save_soup

POSITIONAL = {
    "two": (("a", "A", "the model at t = 0"), ("b", "B", "the model at t = 1")),
    "base+one": (
        ("base", "BASE", "the pretrained (or zero-shot) checkpoint"),
        ("finetuned", "FINETUNED", "a fine-tuned checkpoint or a soup"),
    ),
}


def _typed(param: Param, option: str, settings: bool = False) -> Any:
    """The parse-time check of ``param``'s values: finite, within its declared range;
    with ``settings``, a gradient or filters in YAML's flow style too (`settings`: each
    value is checked against the range when it is resolved)."""
    low, high = param.bounds
    number = o.number(param.kind, low, high, open_low=param.open_low, option=option)

    def parse(text: str) -> Any:
        if settings and text.lstrip()[:1] in ("[", "{"):
            try:
                return st.parse(text, option)
            except st.SettingError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return number(text)

    return parse


def _add_param(p: argparse.ArgumentParser, param: Param) -> None:
    if param.kind is bool:
        p.add_argument(
            param.option, dest=param.name, action=argparse.BooleanOptionalAction,
            default=None, help=f"{param.help} (default: {'on' if param.default else 'off'})",
        )  # fmt: skip
        return
    if isinstance(param.kind, tuple):
        p.add_argument(
            param.option, dest=param.name, choices=param.kind, default=None,
            help=f"{param.help} (default: {param.default})",
        )  # fmt: skip
        return
    default = "required" if param.default is None else f"default {param.default:g}"
    if param.grid:
        default += ", or chosen on the held-out split with an evaluator"
    p.add_argument(
        param.option, dest=param.name, type=_typed(param, param.option, settings=True),
        metavar=param.option.lstrip("-").upper(), help=f"{param.help} ({default}; or per "
        "tensor: a gradient over the layers '[0, 0.5, 1]' or filters '[{filter: mlp, value: "
        "0.3}, {value: 0.5}]', as in mergekit's YAML)",
    )  # fmt: skip
    if param.grid:
        p.add_argument(
            param.grid_option, dest=f"{param.name}_grid", nargs="+",
            type=_typed(param, param.grid_option), default=list(param.grid),
            metavar=param.option.lstrip("-").upper(),
            help=f"with an evaluator: the values of {param.option} to score (default "
            f"{' '.join(f'{v:g}' for v in param.grid)})",
        )  # fmt: skip


def add(sub: argparse._SubParsersAction, merge: Merge) -> argparse.ArgumentParser:
    parents = [o.KEY, o.OUTPUT, o.QUIET, o.INTEGERS, c.TENSORS]
    if merge.inputs in ("models", "models+base"):
        parents.insert(0, o.READ)
    if merge.inputs == "models":
        parents.append(c.OPTIONAL_BASE)
    if merge.tensor_weights:
        parents.append(c.WEIGHTS_FOR)
    if merge.casts:
        parents.append(o.NUMERIC)
    if merge.tuned:
        parents += [o.EVAL, cf.CERTIFY]
    tuning = (
        " Give every parameter, or an evaluator to choose those left out on the held-out "
        "split from their grids."
        if merge.tuned
        else " No held-out data needed."
    )
    p = sub.add_parser(
        merge.name,
        parents=parents,
        help=merge.summary,
        description=f"{merge.summary[0].upper()}{merge.summary[1:]}. After {merge.paper}: "
        f"{merge.formula}.{tuning}",
    )
    for name, metavar, help in POSITIONAL.get(merge.inputs, ()):
        p.add_argument(name, metavar=metavar, help=help)
    if merge.inputs == "models+base":
        p.add_argument("--base", required=True, metavar="THETA0", help="the model fine-tuned from")
    if merge.weights:
        p.add_argument(
            "--weights", nargs="+", type=o.number(float, option="--weights"), metavar="W",
            help="one weight per ingredient (default: equal)",
        )  # fmt: skip
    for param in merge.params:
        _add_param(p, param)
    p.add_argument(
        "--dtype", choices=sorted(DTYPE_NAMES), default=None,
        help="dtype of the output's floating tensors (default: the ingredients')",
    )  # fmt: skip
    p.set_defaults(run=partial(run, merge=merge))
    return p


def open_inputs(
    args: argparse.Namespace, merge: Merge
) -> tuple[tuple[Any, ...], list[Ingredient], c.Prepared]:
    """The merge's positional inputs (as the function takes them, prepared: `--vocab`,
    `--keep`, `--only`), every ingredient read (the base last), and the preparation."""

    def one(path: str) -> Ingredient:
        return open_ingredient(path, key=args.key, base_model=args.base_model)

    if merge.inputs in POSITIONAL:
        first, second = (one(getattr(args, n)) for n, _, _ in POSITIONAL[merge.inputs])
        check_distinct([first, second])
        if merge.inputs == "base+one":
            prep = c.prepare_args(args, [second], first)
            return (prep.base, prep.ingredients[0]), [second, first], prep
        prep = c.prepare_args(args, [first, second], None)
        return tuple(prep.ingredients), [first, second], prep
    read, prep = c.open_prepared(args, merge.min_models)
    if merge.inputs == "models":
        return (prep.ingredients,), read, prep
    return (prep.ingredients, prep.base), read, prep


def _options(args: argparse.Namespace, merge: Merge, prep: c.Prepared) -> dict[str, Any]:
    """The keywords the command line fixes: weights, untuned parameters, numerics."""
    out: dict[str, Any] = {"integers": args.integers}
    if merge.weights and args.weights is not None:
        out["weights"] = args.weights
    if merge.casts:
        out["accumulate"] = parse_dtype(args.accumulate)
    if merge.optional_base and prep.base is not None:  # the task vectors' origin
        out["base"] = prep.base
    if merge.tensor_weights and prep.tensor_weights:
        out["weights_for"] = prep.tensor_weights
    for param in merge.params:
        value = getattr(args, param.name)
        if not param.grid:
            if value is None and param.default is None:
                raise SoupError(f"give {param.option}: {merge.name} has no default for it")
            out[param.name] = param.default if value is None else value
    return out


def _missing(args: argparse.Namespace, merge: Merge) -> list[Param]:
    """The tuned parameters the command line leaves out."""
    return [p for p in merge.tuned if getattr(args, p.name) is None]


def tuned_values(
    args: argparse.Namespace,
    merge: Merge,
    inputs: tuple[Any, ...],
    evaluator: Any,
    fixed: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The tuned parameters' values: as given, chosen on the held-out split by
    ``evaluator`` (None: none; the other keywords ``fixed``), or their defaults; and the
    grid's rows, if one ran."""
    given = {p.name: getattr(args, p.name) for p in merge.tuned}
    missing = _missing(args, merge)
    if not missing:
        return given, None
    if evaluator is None:
        required = [p.option for p in missing if p.default is None]
        if required:
            raise SoupError(
                f"give {' and '.join(required)}, or --model and --data (or --evaluator, "
                "--task) to choose it on the held-out split"
            )
        return {p.name: p.default if given[p.name] is None else given[p.name]
                for p in merge.tuned}, None  # fmt: skip
    axes = {
        p.name: [given[p.name]] if given[p.name] is not None else getattr(args, f"{p.name}_grid")
        for p in merge.tuned
    }
    return tune(merge, inputs, evaluator, axes, fixed=fixed)


def run(args: argparse.Namespace, merge: Merge) -> int:
    inputs, read, prep = open_inputs(args, merge)
    out = o.check_writable(args, read, run_folder=False)
    fixed = _options(args, merge, prep)
    searches = bool(_missing(args, merge)) and o.wants_evaluator(args)
    held = cf.held_out(args, o.make_evaluator(args, prep.ingredients[0])) if searches else None
    evaluator = held.choose if held is not None else None
    # a run folder where an evaluator runs, or where the user names one
    keeps_run = evaluator is not None or args.run_dir is not None
    if keeps_run:  # every check done: now write
        args.folders.claim(o.run_dir(args), read, args.force)
    point, rows = tuned_values(args, merge, inputs, evaluator, fixed)
    t0 = time.perf_counter()
    dtype = parse_dtype(args.dtype) if args.dtype else None
    if varies(merge, {**fixed, **point}):  # a gradient or filters: per tensor
        soup, details = per_tensor(merge, inputs, dtype=dtype, **fixed, **point)
    else:
        soup, details = merge.make(inputs, dtype=dtype, **fixed, **point)
    declared = {p.name: p.option.removeprefix("--") for p in merge.params}  # lam: lambda
    shown = {declared.get(k, k): v for k, v in {**fixed, **point}.items() if _shown(k, v)}
    c.print_rules(prep)
    if held is not None:
        # against the best of the models merged (not the base): what would ship instead
        cert = certify_soup(prep.ingredients, held, lazy_state(soup), o.run_dir(args))
        write_json(
            o.run_dir(args) / f"{merge.name.replace('-', '_')}.json",
            {"chosen": point, "grid": rows, "inputs": [i.source for i in read], **details,
             "certified": cert},
        )  # fmt: skip
        write_json(o.run_dir(args) / "result.json", {"recipe": merge.name, "chosen": point,
                                                     "certified": cert})  # fmt: skip
        if not o.is_rank0():
            return 0
        _print_grid(rows or [], point)
        cf.say(held, {merge.label: cert}, cf.metric_of(evaluator))
    save_soup(
        args,
        soup,
        read,
        merge.name,
        evaluator=evaluator,
        summary={**shown, **details, **prep.summary()},
        run_folder=keeps_run,
        template=prep.ingredients[0],
        base=prep.given_base,
        roles=_roles(merge, read, prep.base is not None),
    )
    base = getattr(args, "base", None) if merge.inputs == "models" else None
    _report(merge, soup, read, out, shown, details, time.perf_counter() - t0, base)
    return 0


def _roles(merge: Merge, read: Sequence[Ingredient], has_base: bool) -> list[str]:
    """Each input's part, in the order ``read`` holds them (the base last)."""
    if merge.inputs == "two":
        return ["A", "B"]
    if merge.inputs == "base+one":
        return ["finetuned", "base"]
    models = len(read) - (merge.inputs == "models+base" or has_base)
    return ["model"] * models + ["base"] * (len(read) - models)


def _shown(key: str, value: Any) -> bool:
    return key not in ("integers", "accumulate", "dtype", "weights_for") and value is not None


def _print_grid(rows: Sequence[dict[str, Any]], point: dict[str, Any]) -> None:
    cols = [c for c in rows[0] if c not in point and c != "heldout"] or ["heldout"]
    print("  ".join(f"{k:>8}" for k in point) + "".join(f"{c:>10}" for c in cols))
    for row in rows:
        mark = "  <- best held-out" if all(row[k] == v for k, v in point.items()) else ""
        print(
            "  ".join(f"{row[k]:8.3g}" for k in point)
            + "".join(f"{row[c]:>10.4f}" for c in cols)
            + mark
        )


def _report(
    merge: Merge,
    soup: Any,
    read: Sequence[Ingredient],
    out: Any,
    shown: dict[str, Any],
    details: dict[str, Any],
    seconds: float,
    args_base: str | None = None,
) -> None:
    label = {"lam": "lambda"}
    chosen = ", ".join(
        f"{label.get(k, k)} {v:g}" if isinstance(v, float) else f"{label.get(k, k)} {v}"
        for k, v in shown.items()
        if k != "weights"
    )
    what = {  # each a function: only the merge's own inputs are there to name
        "models": lambda: (
            f"{merge.label} of {len(read) - (args_base is not None)} "
            "ingredients" + (f" (base {args_base})" if args_base is not None else "")
        ),
        "models+base": lambda: f"{merge.label} of {len(read) - 1} ingredients on {read[-1].source}",
        "two": lambda: f"{merge.label} of {read[0].source} and {read[1].source}",
        "base+one": lambda: f"{merge.label} of {read[0].source} toward {read[1].source}",
    }[merge.inputs]()
    layout = soup.layout
    print(
        f"wrote {out}: {what} ({chosen or 'no parameters'}), {human_count(layout.numel)} "
        f"parameters, {human_bytes(layout.nbytes)}, in {seconds:.1f} s"
    )
    ratios = details.get("ratios")
    if ratios:
        values = list(ratios.values())
        print(
            f"ratio t per tensor from {min(values):.3f} to {max(values):.3f} "
            f"(mean {sum(values) / len(values):.3f})"
        )
        clamped = details.get("clamped") or {}
        if clamped:
            names = ", ".join(list(clamped)[:5]) + (", ..." if len(clamped) > 5 else "")
            print(f"{len(clamped)} tensor(s) with a negative mean cosine keep θ0 (t = 0): {names}")
