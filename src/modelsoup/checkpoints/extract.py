"""A soup of full fine-tunes shipped as a PEFT LoRA adapter on its base
(``--adapter-rank R --base BASE``), as ``mergekit-extract-lora`` ships one fine-tune.

Each linear layer (``nn.Linear``, or transformers' ``Conv1D``, whose weight is stored
[in, out]) whose weight the soup changes gets the truncated SVD of ΔW = soup − base at
rank R: B = U·√S, A = √S·Vᵀ (mergekit's ``distribute_scale``), lora_alpha = R so the
scale is 1, and its relative error ‖ΔW − B·A‖ / ‖ΔW‖ is recorded. Where every such layer
has a bias (GPT-2), the change of each bias is peft's ``lora_B.bias`` (``lora_bias:
true``; peft merges bias + s·lora_B.bias). A module the soup changes that LoRA cannot
express is stored whole in ``modules_to_save``: embeddings and norms (as mergekit does),
a linear layer whose bias changed where the others have none, and any module whose error
exceeds ``max_error``. Unchanged modules are left out. At full rank the adapter is the
soup, up to float rounding.

Memory: one module's weights, its SVD and its factors at a time. Time: one SVD per
linear layer, exact up to 1024 (or R above a quarter of the smaller side), randomized
beyond (`adapters.EXACT_UP_TO`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SoupError, option, render
from .adapters import ADAPTER_CONFIG, PREFIX, low_rank
from .ingredients import Ingredient
from .tokens import hf_folder
from .vocab import meta_model


@dataclass
class Extraction:
    """What was written: the rank, each LoRA module's relative error, and the modules
    stored whole with the reason."""

    rank: int
    errors: dict[str, float] = field(default_factory=dict)
    whole: dict[str, str] = field(default_factory=dict)


def _modules(
    soup: Ingredient, base: Ingredient, model: torch.nn.Module, fan: bool, bias: bool
) -> Iterator[tuple[str, str, dict[str, torch.Tensor]]]:
    """For each module whose tensors the soup changes, one at a time: (module, kind, the
    soup's tensors), kind 'lora' or why it can only be stored whole (``bias``: the
    adapter carries the linear layers' bias changes)."""
    lay = soup.layout
    lora = "Conv1D" if fan else "Linear"
    # the architecture's ties (lm_head.weight is wte.weight), which a checkpoint saved by
    # save_pretrained does not store
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    shared = {n: names for names in by_id.values() for n in names}
    covered: set[str] = set()
    for mod, module in model.named_modules():
        names = [f"{mod}.{p}" if mod else p for p, _ in module.named_parameters(recurse=False)]
        covered.update(names)
        theirs = {n: soup.get(n) for n in names if n in lay.names}
        if not theirs or all(torch.equal(t, base.get(n)) for n, t in theirs.items()):
            continue
        tied = [n for n in theirs if len(shared.get(n, ())) > 1 or n in lay.aliases
                or n in lay.aliases.values()]  # fmt: skip
        if tied:
            raise SoupError(
                f"the soup changes {tied[0]}, which is tied to "
                f"{[t for t in shared.get(tied[0], [tied[0]]) if t != tied[0]] or 'another tensor'}"
                "; an adapter cannot keep weights tied (peft's merged model would use the "
                f"base's): write the full model (drop {option('rank', flag='--adapter-rank')}), "
                f"or take it from the base with {option('keep', tied[0] + '=base')}"
            )
        kind = type(module).__name__
        weight, b = f"{mod}.weight", f"{mod}.bias"
        if kind == lora and weight in theirs and theirs[weight].ndim == 2:
            changed = b in theirs and not torch.equal(theirs[b], base.get(b))
            kind = (
                "its bias changed (the other layers have none)" if changed and not bias else "lora"
            )
        elif kind in ("Linear", "Conv1D"):
            kind = "a linear layer of the other storage order (fan_in_fan_out)"
        else:
            kind = f"a {kind}, not a linear layer"
        yield mod, kind, theirs
    for name in lay.specs:
        if name not in covered and not torch.equal(soup.get(name), base.get(name)):
            raise SoupError(
                f"the soup changes {name!r}, which is no parameter of the architecture "
                "(a buffer?), so no adapter carries it; write the full model"
            )


def extract_lora(
    soup: Ingredient,
    base: Ingredient,
    path: str | Path,
    rank: int,
    *,
    max_error: float | None = None,
    force: bool = False,
) -> Extraction:
    """Write ``soup`` as a PEFT LoRA adapter of rank ``rank`` on ``base`` (a Hugging Face
    folder); atomic. The rank is capped at the largest full rank of the modules (beyond
    it the factors would hold zeros only)."""
    from safetensors.torch import save_file

    from .save import atomic_output, check_output

    folder = hf_folder(base, option("rank", flag="--adapter-rank"))
    path = Path(path)
    check_output(path, tuple(base.files) + tuple(soup.files), force)
    sl, bl = soup.layout, base.layout
    differ = [n for n in sl.names if n not in bl.names or sl.spec(n).shape != bl.spec(n).shape]
    if differ or set(bl.specs) - set(sl.names):
        raise SoupError(
            f"the soup and the base {base.source} differ in their tensors (first "
            f"{(differ or sorted(set(bl.specs) - set(sl.names)))[0]!r}), so the soup is no "
            f"adapter of it: with {option('vocab')}, choose {option('vocab', 'base')}; or drop "
            f"{option('rank', flag='--adapter-rank')}"
        )
    model = meta_model(folder, option("rank", flag="--adapter-rank"))
    kinds = [type(m).__name__ for m in model.modules()]
    # peft reads fan_in_fan_out ([in, out] weights: transformers' Conv1D) for the whole
    # adapter: the more common kind of linear layer gets LoRA
    fan = kinds.count("Conv1D") > kinds.count("Linear")
    layers = [m for m in model.modules() if type(m).__name__ == ("Conv1D" if fan else "Linear")]
    # peft's lora_bias is one setting: on where every linear layer has a bias to adapt
    bias = bool(layers) and all(getattr(m, "bias", None) is not None for m in layers)
    out = Extraction(rank=min(rank, max((min(m.weight.shape) for m in layers), default=1)))
    tensors: dict[str, torch.Tensor] = {}
    for mod, kind, theirs in _modules(soup, base, model, fan, bias):
        if kind == "lora":
            delta = theirs[f"{mod}.weight"].float() - base.get(f"{mod}.weight").float()
            b, a, err = low_rank(delta.T if fan else delta, out.rank)
            if max_error is None or err <= max_error:
                out.errors[mod] = err
                tensors[f"{PREFIX}{mod}.lora_A.weight"] = a.contiguous()
                tensors[f"{PREFIX}{mod}.lora_B.weight"] = b.contiguous()
                if bias:
                    change = theirs[f"{mod}.bias"].float() - base.get(f"{mod}.bias").float()
                    tensors[f"{PREFIX}{mod}.lora_B.bias"] = change.contiguous()
                continue
            over = render(option("max_error", f"{max_error:g}"))  # a record: spelled now
            kind = f"its rank-{out.rank} error {err:.3g} is over {over}"
        out.whole[mod] = kind
        tensors.update({PREFIX + n: t.contiguous() for n, t in theirs.items()})
    if not out.errors:
        raise SoupError(
            "the soup changes no linear layer of the base that LoRA can adapt within "
            f"{option('max_error', max_error)}, so the adapter would hold whole modules only; "
            f"write the full model (drop {option('rank', flag='--adapter-rank')})"
        )
    config = {**_config(folder, out, fan), "lora_bias": bias}
    with atomic_output(path, force=force, folder=True) as tmp:
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _config(folder: Path, out: Extraction, fan: bool) -> dict[str, Any]:
    """A LoraConfig's fields, peft's defaults for the rest."""
    arch = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if str(arch[0]).endswith("ForCausalLM") else None,
        "base_model_name_or_path": str(folder),
        "r": out.rank,
        "lora_alpha": out.rank,
        "use_rslora": False,
        "fan_in_fan_out": fan,
        "bias": "none",
        "lora_dropout": 0.0,
        "target_modules": sorted(out.errors),
        "modules_to_save": sorted(out.whole) or None,
        "inference_mode": True,
    }
