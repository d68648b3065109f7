"""PEFT LoRA adapters as ingredients: the base model's tensors, with each adapted weight
computed when it is read.

A LoRA adapter (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR
2022) stores, for each target module, A [r, in] and B [out, r]; the adapted weight is
W + s·B·A, with s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (Kalajdzievski,
2023), and B·A transposed when ``fan_in_fan_out`` (GPT-2's Conv1D stores [in, out]).
``modules_to_save`` replace whole base tensors. Any recipe then works on adapters: a
soup of adapters is a soup of the models they define. Memory stays at one tensor: each
adapted weight is computed (in float32, then cast to the base dtype) when it is first
read, and kept only until another tensor is asked for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, MismatchError, SoupError, option
from .files import open_file
from .folders import ShardedCheckpoint
from .ingredients import Origin
from .inputs import read_json, regular_file
from .layout import Layout
from .recent import RecentTensors

# Every field of peft's LoraConfig (up to peft 0.21) and what reading an adapter does with
# it. "read": honoured as peft honours it, peft's defaults included. "inert": it changes
# nothing in the merged weights (training, initialization, bookkeeping). Any other field
# is refused, naming it, unless it holds peft's default (the value given here): those
# change how peft builds or merges the model in ways modelsoup does not reproduce.
READ_FIELDS = (
    "peft_type", "base_model_name_or_path", "r", "lora_alpha", "use_rslora",
    "fan_in_fan_out", "modules_to_save", "target_modules", "exclude_modules",
    "layers_to_transform", "layers_pattern", "lora_bias",
)  # fmt: skip
INERT_FIELDS = (
    "task_type", "auto_mapping", "peft_version", "revision", "inference_mode",
    "lora_dropout", "init_lora_weights", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "runtime_config", "megatron_core", "qalora_group_size",
)  # fmt: skip
REFUSED_UNLESS = {
    "bias": ("none", "trained biases"),
    "rank_pattern": ({}, "per-module ranks"),
    "alpha_pattern": ({}, "per-module alphas"),
    "use_dora": (False, "a DoRA adapter (a learned magnitude per column)"),
    "trainable_token_indices": (None, "trained embedding rows (trainable tokens)"),
    "layer_replication": (None, "layers replicated in the base (the model differs from it)"),
    "use_qalora": (False, "QALoRA (pooled inputs)"),
    "monteclora_config": (None, "MonteCLoRA"),
    "alora_invocation_tokens": (None, "an activated LoRA (applied after invocation tokens)"),
    "velora_config": (None, "VeLoRA"),
    "use_bdlora": (None, "block-diagonal LoRA"),
    "arrow_config": (None, "Arrow routing between adapters"),
    "kasa_config": (None, "KaSA"),
    "megatron_config": (None, "Megatron-parallel layers"),
    "target_parameters": (None, "LoRA on raw parameters (target_parameters)"),
    "ensure_weight_tying": (False, "adapters tied across tied weights"),
}
PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8, "use_rslora": False, "fan_in_fan_out": False}

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."


def is_adapter_folder(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


class LoraAdapter:
    """A PEFT LoRA adapter folder (``adapter_config.json`` and ``adapter_model.*``) read
    as the full model it defines on its base.

    ``base_model`` is the base's folder; default ``base_model_name_or_path`` of the
    adapter's config when that is a local folder. Refused with a clear error: other PEFT
    methods, DoRA, per-module rank or alpha patterns, trained biases, embedding LoRA,
    and shapes that do not fit the base.
    """

    def __init__(self, folder: str | Path, base_model: str | Path | None = None):

        self.folder = Path(folder)
        self.config = self._read_config()
        base = Path(base_model) if base_model else self._named_base()
        if not (base / "config.json").is_file():
            raise CheckpointError(
                f"{self.folder}: the base model {base} is not a Hugging Face model folder "
                f"(no config.json); pass {option('base_model', 'DIR')}"
            )
        self.base = ShardedCheckpoint(base)
        weights = [self.folder / n for n in ADAPTER_WEIGHTS if (self.folder / n).is_file()]
        if not weights:
            raise CheckpointError(
                f"{self.folder}: no {' or '.join(ADAPTER_WEIGHTS)} beside {ADAPTER_CONFIG}"
            )
        self._file = open_file(regular_file(weights[0], self.folder), None)
        self._pairs, self._replaced, self._biases = self._parse(self._file)
        self._recent = RecentTensors()

    # -- the adapter's description ------------------------------------------------------

    def _read_config(self) -> dict:
        path = self.folder / ADAPTER_CONFIG
        config = read_json(path, self.folder)
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: an adapter's config is a JSON object")
        kind = config.get("peft_type")
        if kind != "LORA":
            self._refuse(f"peft_type {shown(kind)}; only LORA adapters are supported")
        for key, value in config.items():
            if key in REFUSED_UNLESS:
                default, what = REFUSED_UNLESS[key]
                if value != default and not (default is None and value in ({}, [], False)):
                    self._refuse(
                        f"{key} = {json.dumps(value)[:80]}: {what}, which modelsoup does not read"
                    )
            elif (
                key not in READ_FIELDS
                and key not in INERT_FIELDS
                and value not in (None, False, {}, [], "")
            ):
                self._refuse(
                    f"{key} = {json.dumps(value)[:80]}: a LoraConfig field modelsoup does not know "
                    "(a newer peft?)"
                )
        r = config.get("r", PEFT_DEFAULTS["r"])
        if not isinstance(r, int) or isinstance(r, bool) or not 0 < r < 2**31:
            self._refuse(f"r = {shown(r)}: the rank must be a positive integer")
        alpha = config.get("lora_alpha", PEFT_DEFAULTS["lora_alpha"])
        if (
            not isinstance(alpha, (int, float))
            or isinstance(alpha, bool)
            or abs(alpha) > 1e300  # a huge integer overflows a float
            or not math.isfinite(alpha)
        ):
            self._refuse(f"lora_alpha = {shown(alpha)}: must be a finite number")
        return config

    def _refuse(self, why: str) -> None:
        raise CheckpointError(
            f"{self.folder / ADAPTER_CONFIG}: {why}; merge it into the base with peft's "
            "merge_and_unload() and save_pretrained(), then use that folder"
        )

    def _named_base(self) -> Path:
        name = self.config.get("base_model_name_or_path")
        if not isinstance(name, str) or not name or len(name) > 4096 or not is_dir(name):
            raise CheckpointError(
                f"{self.folder}: the adapter's base {shown(name)} is not a local folder; pass "
                f"{option('base_model', 'DIR')} with the base model's folder"
            )
        return Path(name)

    def _parse(self, file) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, str]]:
        """``{base tensor: (A name, B name)}``, ``{base tensor: stored replacement}`` and
        ``{base bias: stored lora_B bias}`` (peft's ``lora_bias``)."""
        base = self.base.layout
        pairs: dict[str, list[str | None]] = {}
        replaced: dict[str, str] = {}
        biases: dict[str, str] = {}
        for stored in file.layout.names:
            name = stored.removeprefix(PREFIX)
            if name.endswith(".lora_B.bias"):
                if not self.config.get("lora_bias"):
                    raise CheckpointError(
                        f"{self.folder}: {stored} is a bias of lora_B, but lora_bias is false, "
                        "so peft ignores it (mergekit-extract-lora writes such adapters); set "
                        f'"lora_bias": true in {ADAPTER_CONFIG} if the bias belongs to it'
                    )
                target = name.removesuffix(".lora_B.bias") + ".bias"
                biases[self._base_name(target, stored)] = stored
                continue
            for part, i in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
                if name.endswith(part):
                    target = name.removesuffix(part) + ".weight"
                    pairs.setdefault(target, [None, None])[i] = stored
                    break
            else:
                if "lora_embedding" in name or "lora_magnitude" in name:
                    raise CheckpointError(
                        f"{self.folder}: tensor {stored!r} is of a LoRA kind modelsoup does "
                        "not read (embedding LoRA or DoRA); merge the adapter with peft first"
                    )
                replaced[name.replace(".modules_to_save", "")] = stored
        out: dict[str, tuple[str, str]] = {}
        for target, (a, b) in pairs.items():
            if a is None or b is None:
                raise CheckpointError(f"{self.folder}: {target} has only one of lora_A, lora_B")
            out[self._base_name(target, a)] = (a, b)
        replaced = {self._base_name(name, stored): stored for name, stored in replaced.items()}
        for target, stored in biases.items():
            if file.layout.spec(stored).shape != base.spec(target).shape:
                raise MismatchError(
                    f"{self.folder}: {stored} {list(file.layout.spec(stored).shape)} does not "
                    f"fit {target} {list(base.spec(target).shape)} of the base"
                )
        for target, (a, b) in out.items():
            sa, sb = file.layout.spec(a).shape, file.layout.spec(b).shape
            shape = (sb[0], sa[1]) if not self.config.get("fan_in_fan_out") else (sa[1], sb[0])
            if len(sa) == 2 and len(sb) == 2 and sa[0] == sb[1] and sa[0] != self.rank:
                raise MismatchError(
                    f"{self.folder}: LoRA {a} has rank {sa[0]} but the config's r is "
                    f"{self.rank} (peft's default 8 when r is left out); fix r in "
                    f"{ADAPTER_CONFIG}"
                )
            if len(sa) != 2 or len(sb) != 2 or sa[0] != sb[1] or shape != base.spec(target).shape:
                raise MismatchError(
                    f"{self.folder}: LoRA {a} {list(sa)} and {b} {list(sb)} do not fit "
                    f"{target} {list(base.spec(target).shape)} of the base {self.base.source}"
                )
        return out, replaced, biases

    def _base_name(self, name: str, stored: str) -> str:
        base = self.base.layout
        if name not in base.names:
            raise MismatchError(
                f"{self.folder}: {stored!r} adapts {name!r}, which the base "
                f"{self.base.source} does not have; is {option('base_model')} the adapter's base?"
            )
        return base.canonical(name)

    @property
    def rank(self) -> int:
        """The config's r (peft's default 8): the stored tensors' rank."""
        return int(self.config.get("r", PEFT_DEFAULTS["r"]))

    def scale(self, r: int | None = None) -> float:
        """s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, with peft's defaults
        (r 8, lora_alpha 8) for fields the config leaves out."""
        r = self.rank if r is None else r
        alpha = float(self.config.get("lora_alpha", PEFT_DEFAULTS["lora_alpha"]))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    # -- the Ingredient protocol ----------------------------------------------------------

    @property
    def source(self) -> str:
        return str(self.folder)

    @property
    def base_source(self) -> str:
        """The base model's folder, resolved: adapters on different bases never mix."""
        return str(self.base.folder.resolve())

    @property
    def origin(self) -> Origin:
        """The adapter's folder, and its base (whose folder a full-model soup copies)."""
        return Origin(folder=self.folder, base=self.base, base_source=self.base_source)

    @property
    def layout(self) -> Layout:
        return self.base.layout

    @property
    def files(self) -> tuple[Path, ...]:
        # every file the reading opens: the config (its alpha, r, ...), the weights, the base
        return (self.folder, self.folder / ADAPTER_CONFIG, *self._file.files, *self.base.files)

    def get(self, name: str) -> torch.Tensor:
        name = self.layout.canonical(name)
        if name not in self._pairs and name not in self._replaced and name not in self._biases:
            return self.base.get(name)
        return self._recent.get(name, self._compute)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        name = self.layout.canonical(name)
        if name not in self._pairs and name not in self._replaced and name not in self._biases:
            return self.base.read(name, start, stop)
        flat = self.get(name).view(-1)
        return flat[start : flat.numel() if stop is None else stop].clone()

    def _compute(self, name: str) -> torch.Tensor:
        spec = self.layout.spec(name)
        if name in self._biases:  # peft merges bias + lora_B.bias * s
            extra = self._file.get(self._biases[name]).float() * self.scale()
            return (self.base.get(name).float() + extra).to(spec.dtype)
        if name in self._replaced:
            t = self._file.get(self._replaced[name])
            if tuple(t.shape) != spec.shape:
                raise MismatchError(
                    f"{self.folder}: {self._replaced[name]} is {list(t.shape)} but {name} of "
                    f"the base is {list(spec.shape)}"
                )
            return t.to(spec.dtype)
        a_name, b_name = self._pairs[name]
        a = self._file.get(a_name).float()
        b = self._file.get(b_name).float()
        delta = (b @ a) * self.scale()
        if self.config.get("fan_in_fan_out"):
            delta = delta.T
        return (self.base.get(name).float() + delta).to(spec.dtype)

    @property
    def storage_format(self) -> str:
        return f"lora adapter (r {self.config.get('r')}, base {self.base.folder})"

    def __repr__(self) -> str:
        return f"LoraAdapter({str(self.folder)!r}, base={str(self.base.folder)!r})"


# A truncated SVD of rank R of an [m, n] change costs O(m·n·min(m, n)) exactly (62 s for
# 4096 x 11008 on 2 cores: 2.3 hours for a 7B model) and O(m·n·R) by the randomized
# algorithm (Halko et al., 2011; torch.svd_lowrank, 4 power iterations: 1.1 s there, with
# an error 0.07% above the optimum at R = 64). Exact where that is cheap or R is large.
EXACT_UP_TO = 1024  # min(m, n) up to which the SVD is exact whatever R
OVERSAMPLE, POWER_ITERATIONS = 16, 4


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """LoRA's B [out, rank] and A [rank, in] of ΔW [out, in] from its truncated SVD
    (B = U·√S, A = √S·Vᵀ; zero-padded past its rank), and the relative Frobenius error
    ‖ΔW − B·A‖ / ‖ΔW‖ (0 for a ΔW of zero): what every adapter modelsoup writes holds."""
    small = min(delta.shape)
    if small <= EXACT_UP_TO or 4 * rank > small:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        with torch.random.fork_rng(devices=[]):  # the same factors on every run
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta, q=rank + OVERSAMPLE, niter=POWER_ITERATIONS)
        vh = v.T
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    b = torch.zeros(delta.shape[0], rank)
    a = torch.zeros(rank, delta.shape[1])
    b[:, :r], a[:r] = u[:, :r] * root, root[:, None] * vh[:r]
    norm = float(delta.norm())
    return b, a, (float((delta - b @ a).norm()) / norm if norm else 0.0)


def save_adapter(
    soup: Any,
    adapters: Sequence[LoraAdapter],
    path: str | Path,
    rank: int,
    *,
    force: bool = False,
    progress: bool = False,
) -> tuple[dict[str, float], int]:
    """Write ``soup`` as a PEFT LoRA adapter of rank ``rank`` on the adapters' base;
    return each module's error and the rank written: ``rank``, or the largest full rank
    of the modules (min(out, in)) when ``rank`` is more (beyond it the adapter would
    hold zeros only).

    For each module any adapter targets, ΔW = soup − base (as [out, in]) is replaced by
    its truncated SVD at rank ``rank``: B = U·√S, A = √S·Vᵀ, with lora_alpha = r so the
    scale is 1. Tensors an adapter replaces whole (``modules_to_save``) are saved whole.
    An average of k adapters of rank r has rank up to k·r, so a smaller ``rank`` loses
    something: the relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ of each module is returned
    (0 for a ΔW of zero). Atomic, like every writer.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from .save import atomic_output, check_output

    if rank < 1:
        raise SoupError(f"{option('rank', flag='--adapter-rank')} must be at least 1, got {rank}")
    first = adapters[0]
    base = first.base
    fan = bool(first.config.get("fan_in_fan_out"))
    if any(bool(a.config.get("fan_in_fan_out")) != fan for a in adapters):
        raise SoupError("the adapters disagree on fan_in_fan_out; write the full model instead")
    targets = sorted({n for a in adapters for n in a._pairs})
    whole = sorted({n for a in adapters for n in a._replaced})
    full = max((min(base.layout.spec(n).shape) for n in targets), default=rank)
    rank = min(rank, full)
    path = Path(path)
    check_output(path, tuple(f for a in adapters for f in a.files), force)
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for name in tqdm(targets, desc="adapter modules", disable=not progress, delay=0.5):
        delta = soup.get(name).float() - base.get(name).float()
        b, a, errors[name] = low_rank(delta.T if fan else delta, rank)
        module = PREFIX + name.removesuffix(".weight")
        tensors[f"{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{module}.lora_B.weight"] = b.contiguous()
    for name in whole:
        tensors[PREFIX + name] = soup.get(name).contiguous()
    changed = [
        n
        for n in soup.layout.specs
        if n not in targets and n not in whole and not torch.equal(soup.get(n), base.get(n))
    ]
    if changed:
        raise SoupError(
            f"the soup changes {len(changed)} tensor(s) no adapter targets (first "
            f"{changed[0]!r}), so it is no adapter of the base; write the full model (drop "
            f"{option('rank', flag='--adapter-rank')})"
        )
    config = _adapter_config(first, rank, targets, whole)
    with atomic_output(path, force=force, folder=True) as tmp:
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return errors, rank


def _adapter_config(
    first: LoraAdapter, rank: int, targets: Sequence[str], whole: Sequence[str]
) -> dict[str, Any]:
    """The written adapter's config: the first adapter's, at rank ``rank`` with scale 1,
    its targets and whole modules, on the same base."""
    return {
        **first.config,
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": sorted({n.removesuffix(".weight") for n in targets}),
        "modules_to_save": sorted({n.rsplit(".", 1)[0] for n in whole}) or None,
        "base_model_name_or_path": str(first.base.folder),
    }


def shown(value: object, limit: int = 60) -> str:
    """``value`` as a message shows it: its JSON, cut at ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_dir(name: str) -> bool:
    """Whether ``name`` is a folder; False for a name the system cannot even look up."""
    try:
        return Path(name).is_dir()
    except (OSError, ValueError):
        return False
