"""``modelsoup merge CONFIG.yml OUTPUT`` (or ``-o OUTPUT``): run a mergekit configuration
(see `modelsoup.merges.mergekit_config` for what is read and what is refused, and
`modelsoup.merges.mergekit_build` for how the merge is assembled)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..checkpoints.read import open_ingredient
from ..checkpoints.tokens import same_vocabulary
from ..checkpoints.vocab import align_vocabulary
from ..errors import SoupError
from ..merges.mergekit_build import build
from ..merges.mergekit_config import ConfigError, MergePlan, plan
from ..merges.registry import MERGES
from ..ops.checks import check_distinct, check_same_names
from ..ops.summary import human_bytes
from . import options as o
from .output import save_soup

PRECISIONS = {"mergekit": "inputs", "float32": "float32"}
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def add(sub: argparse._SubParsersAction) -> None:
    methods = sorted(m for merge in MERGES.values() for m in merge.mergekit)
    p = sub.add_parser(
        "merge",
        parents=[o.QUIET],
        help="run a mergekit YAML configuration (gradients, filters, slices)",
        description=f"Run a mergekit 0.1.5 YAML configuration as mergekit-yaml runs it: "
        f"merge_method ({', '.join(methods)}), base_model, models or slices (sources with "
        "layer_range), parameters as scalars, gradients ([0, 0.5, 1]: interpolated over "
        "the layers) or filter blocks ([{filter: self_attn, value: ...}, {value: ...}]), "
        "per model or per slice, dtype (the inputs are cast to it and the merge computed "
        "in it, as mergekit), out_dtype, tokenizer_source (or tokenizer: source, "
        "pad_to_multiple_of): base or union, and name. Refused, naming the key: modules, "
        "a model as the tokenizer source, tokenizer tokens and revisions (@...). The "
        "output is a "
        "folder (or a .safetensors file) carrying modelsoup.json and a model card.",
    )
    p.add_argument("config", metavar="CONFIG.yml", help="the mergekit configuration")
    p.add_argument(
        "output", metavar="OUTPUT", nargs="?", default=None,
        help="the merged model's folder (as mergekit-yaml; or give -o)",
    )  # fmt: skip
    p.add_argument("-o", "--output", dest="output_option", metavar="OUTPUT", default=None,
                   help="the merged model's folder, as the other commands take it")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--max-shard-size", default="5GB", help="largest weight file of the folder (default 5GB)"
    )
    p.add_argument(
        "--precision", choices=sorted(PRECISIONS), default="mergekit",
        help="mergekit (default): inputs cast to the configuration's dtype and the merge "
        "computed in it, giving mergekit's tensors; float32: inputs as stored, computed in "
        "float32, rounded once to out_dtype (else dtype)",
    )  # fmt: skip
    p.set_defaults(run=run, key=None, base_model=None, run_dir=None)


def _output(args: argparse.Namespace) -> None:
    if (args.output is None) == (args.output_option is None):
        raise SoupError("give the output once: modelsoup merge CONFIG.yml OUTPUT (or -o OUTPUT)")
    args.output = args.output or args.output_option


def _same_spelling(p: MergePlan, names: list[str]) -> None:
    """Refuse one folder named two ways (``base`` and ``base/``): mergekit would read
    them as two models, so the base would be merged as a fine-tune of itself."""
    seen: dict[Path, str] = {}
    for name in names:
        key = Path(name).resolve()
        if key in seen:
            raise ConfigError(
                f"{p.config}: {seen[key]!r} and {name!r} are the same folder; spell it one way "
                "everywhere in the configuration (as base_model and in models alike): mergekit "
                "would read the two spellings as two models"
            )
        seen[key] = name


def run(args: argparse.Namespace) -> int:
    _output(args)
    p = plan(args.config)
    for note in p.ignored:
        print(f"note: {p.config}: {note} is ignored: {p.method} takes no such parameter "
              "(mergekit ignores it too)", file=sys.stderr)  # fmt: skip
    names = list(dict.fromkeys([*p.models, *([p.base] if p.base else []),
                                *(s.base for s in p.slices if s.base)]))  # fmt: skip
    _same_spelling(p, names)
    opened = {m: open_ingredient(m) for m in names}
    read = list(opened.values())
    check_distinct(read)
    check_same_names(read)  # another architecture is told as such, not as a vocabulary
    vocab = None
    if p.vocab is not None:
        models, base, vocab = align_vocabulary(
            [opened[m] for m in p.models], opened.get(p.base or ""), p.vocab, p.vocab_multiple
        )
        opened = {**dict(zip(p.models, models)), **({p.base: base} if p.base else {})}
    elif not same_vocabulary(read):
        raise ConfigError(
            f"{p.config}: the models' tokenizers differ (tokens added in some); add "
            "tokenizer_source: union (or base) to merge their vocabularies"
        )
    out = o.check_writable(args, read, run_folder=False)
    t0 = time.perf_counter()
    soup, details, layers = build(p, opened, precision=PRECISIONS[args.precision])
    first = p.base or p.slices[0].sources[0].model
    template = opened[first]
    declared = {q.name: q.mergekit for q in p.merge.params if q.mergekit}  # lam: lambda
    keywords = {declared.get(k, k): v for k, v in {**p.keywords, **details}.items()}
    summary = {"mergekit_config": str(p.config), "merge_method": p.method,
               "precision": args.precision, **keywords}  # fmt: skip
    if p.name:
        summary["name"] = p.name
    if vocab is not None:
        summary["vocab"] = vocab.vocab.summary([i.source for i in vocab.inputs])
    ordered = [opened[first], *[i for m, i in opened.items() if m != first]]
    save_soup(
        args, soup, ordered, p.merge.name, summary=summary, run_folder=False,
        template=template,
        files={**_config_files(p, template, layers), **_chat_template(p, template, opened)},
        roles=["base" if m == p.base and p.takes_base else "model"
               for m in [first, *[m for m in opened if m != first]]],
    )  # fmt: skip
    print(
        f"wrote {out}: {p.method} ({p.merge.name}) of {len(read)} models, {layers} layers, "
        f"{human_bytes(soup.layout.nbytes)}, in {time.perf_counter() - t0:.1f} s"
    )
    return 0


NAMED_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def _chat_template(p: MergePlan, template: Any, opened: dict[str, Any]) -> dict[str, str]:
    """The tokenizer files with ``chat_template`` set, as mergekit writes them (the
    tokenizer's ``save_pretrained``): the template's text, or with ``auto`` the one most
    of the inputs carry; {} without chat_template."""
    text = p.chat_template
    if not text:
        return {}
    import tempfile
    from collections import Counter
    from pathlib import Path

    import transformers

    def folder(ing: Any) -> Path | None:
        files = ing.origin.load_files
        return Path(files[0]).parent if files else None

    if text == "auto":
        found = []
        for ing in opened.values():
            if folder(ing) is not None:
                t = transformers.AutoTokenizer.from_pretrained(folder(ing)).chat_template
                t = t.get("default") if isinstance(t, dict) else t
                if t:
                    found.append(t.strip())
        if not found:
            return {}
        text = Counter(found).most_common(1)[0][0]
    elif text in NAMED_TEMPLATES:
        raise ConfigError(f"{p.config}: chat_template: {text!r} names one of mergekit's "
                          "bundled templates, which modelsoup does not ship: give the "
                          "template's text (Jinja) instead")  # fmt: skip
    elif len(text) < 20 or "{" not in text:
        raise ConfigError(f"{p.config}: chat_template: {text[:40]!r} is not a chat template")
    where = folder(template)
    if where is None:
        raise ConfigError(f"{p.config}: chat_template: the output has no tokenizer to carry it")
    tok = transformers.AutoTokenizer.from_pretrained(where)
    tok.chat_template = text
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return {f.name: f.read_text() for f in Path(tmp).iterdir() if f.is_file()}


def _config_files(p: MergePlan, template: Any, layers: int) -> dict[str, str]:
    """config.json as mergekit writes it: the template's, with the output's layer count
    (slices) and dtype; {} for a file output or a folder whose config is unchanged."""
    files = [f for f in template.origin.load_files if f.name == "config.json"]
    if not files:
        return {}
    config = json.loads(files[0].read_text())
    changed = False
    if p.sliced:
        keys = [k for k in LAYER_KEYS if k in config]
        if not keys:
            raise ConfigError(f"{files[0]}: no layer count ({', '.join(LAYER_KEYS)}) to set "
                              f"to the slices' {layers} layers")  # fmt: skip
        config[keys[0]] = layers
        changed = True
    dtype = p.out_dtype or p.dtype
    if dtype is not None:
        config["dtype" if "dtype" in config else "torch_dtype"] = dtype
        changed = True
    return {"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"} if changed else {}
