"""``modelsoup merge CONFIG.yml OUTPUT``: run a mergekit configuration (see
`modelsoup.merges.mergekit_config` for what is read and what is refused)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..checkpoints.layout import parse_dtype
from ..checkpoints.read import open_ingredient
from ..checkpoints.tokens import same_vocabulary
from ..checkpoints.vocab import align_vocabulary
from ..merges.mergekit_config import ConfigError, plan
from ..ops.checks import check_distinct
from ..ops.summary import human_bytes
from . import options as o
from .output import save_soup


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        parents=[o.QUIET],
        help="run a mergekit YAML configuration (the registry's methods)",
        description="Run a mergekit 0.1.5 YAML configuration: merge_method (linear, "
        "task_arithmetic, ties, dare_ties, dare_linear, della, della_linear, breadcrumbs, "
        "breadcrumbs_ties, slerp), base_model, models with parameters (weight, density, "
        "epsilon, gamma), parameters (lambda, normalize, rescale, t, int8_mask), dtype, "
        "out_dtype, and tokenizer_source (or tokenizer: source, pad_to_multiple_of): base or "
        "union, with mergekit's defaults. Anything else (slices, gradients, a model as the "
        "tokenizer source) is refused, naming the key. The "
        "output is a folder (or a .safetensors file) carrying modelsoup.json and a model "
        "card.",
    )
    p.add_argument("config", metavar="CONFIG.yml", help="the mergekit configuration")
    p.add_argument("output", metavar="OUTPUT", help="the merged model's folder (as mergekit-yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--max-shard-size", default="5GB", help="largest weight file of the folder (default 5GB)"
    )
    p.set_defaults(run=run, key=None, base_model=None, run_dir=None)


def run(args: argparse.Namespace) -> int:
    p = plan(args.config)
    models = [open_ingredient(m) for m in p.models]
    base = open_ingredient(p.base) if p.base is not None else None
    inputs: tuple[Any, ...] = {
        "two": (base, *models),
        "models": (models,),
        "models+base": (models, base),
    }[p.merge.inputs]
    read = [*models, base] if base is not None else models
    check_distinct(read)
    vocab = None
    if p.vocab is not None:
        models, base, vocab = align_vocabulary(models, base, p.vocab, p.vocab_multiple)
        inputs = {"two": (base, *models), "models": (models,),
                  "models+base": (models, base)}[p.merge.inputs]  # fmt: skip
    elif not same_vocabulary(read):
        raise ConfigError(
            f"{p.config}: the models' tokenizers differ (tokens added in some); add "
            "tokenizer_source: union (or base) to merge their vocabularies"
        )
    out = o.check_writable(args, read, run_folder=False)
    t0 = time.perf_counter()
    # mergekit's out_dtype (or dtype): the written dtype
    dtype = parse_dtype(p.dtype) if p.dtype is not None else None
    soup, details = p.merge.make(inputs, dtype=dtype, **p.keywords)
    template = base if base is not None else models[0]  # the base's config and tokenizer
    first = read[-1] if p.base is not None else read[0]
    summary = {"mergekit_config": str(p.config), "merge_method": p.method, **p.keywords,
               **details}  # fmt: skip
    if vocab is not None:
        summary["vocab"] = vocab.vocab.summary([i.source for i in vocab.inputs])
    save_soup(
        args, soup, [first, *[i for i in read if i is not first]], p.merge.name,
        summary=summary, run_folder=False, template=template,
    )  # fmt: skip
    print(
        f"wrote {out}: {p.method} ({p.merge.name}) of {len(read)} models, "
        f"{human_bytes(soup.layout.nbytes)}, in {time.perf_counter() - t0:.1f} s"
    )
    return 0
