"""Experiment configs: JSON files whose first key is the command that runs them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .sweep import SweepSpace


@dataclass(frozen=True)
class Config:
    """Everything that defines a run of the paper's experiment (defaults: ``image``)."""

    name: str = "image"
    command: str = "modelsoup reproduce --config image"
    task: str = "image"  # image: MobileNetV2 on MNIST; text: MiniLM on tweets
    resolution: int = 64  # image task
    max_length: int = 48  # text task: tokens per tweet
    train: int = 3000
    val: int = 500
    # held back from val, from every choice, to certify what was chosen (jobs/certify.py)
    certify: float = 0.5
    test: int = 1500
    shifts: tuple[str, ...] = ("digits", "noise", "blur", "rotate", "contrast")
    shift_size: int | None = None
    ingredients: int = 8  # the LP initialization (model_0) and ingredients - 1 fine-tunes
    seed: int = 0
    sweep: SweepSpace = field(default_factory=SweepSpace)
    batch_size: int = 64
    eval_batch_size: int = 256
    bn: str = "frozen"  # frozen: keep BatchNorm statistics; train: update, recompute in soups
    # 0: fine-tune every weight; n > 0: only features[n:] and the head (image task), on
    # the frozen blocks' outputs computed once; augmentation and mixup are then off
    train_from: int = 0
    random_orders: int = 3
    # The paper fits learned soups for 5 epochs over 2% of ImageNet train (~26K images,
    # ~500 AdamW steps of 256); over 500 held-out images, 20 epochs of 64 give 160 steps.
    learned_epochs: int = 20
    learned_batch_size: int = 64
    lp_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    # Figures 2-4 (analyses.py): pair soups on this many examples of test and each shift;
    # the landscape on a grid x grid plane, train loss / test error on landscape_examples
    # each and shift error on landscape_examples spread over the shifts.
    analyses: bool = True
    analysis_examples: int = 400
    landscape: bool = True
    landscape_grid: int = 7
    landscape_examples: int = 250

    def __post_init__(self) -> None:
        if self.ingredients < 3:  # model_0 and two fine-tunes: Model Stock needs an angle
            raise ValueError(f"ingredients must be at least 3 (got {self.ingredients})")
        if self.bn not in ("frozen", "train"):
            raise ValueError(f"bn must be 'frozen' or 'train' (got {self.bn!r})")
        if not 0 <= self.certify < 1:
            raise ValueError(f"certify must be in [0, 1) (got {self.certify})")
        if self.train_from < 0:
            raise ValueError(f"train_from must be 0 or more (got {self.train_from})")
        if self.landscape_grid < 2:
            raise ValueError(f"landscape_grid must be at least 2 (got {self.landscape_grid})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "sweep" in data:
            space = {k: tuple(v) if isinstance(v, list) else v for k, v in data["sweep"].items()}
            data["sweep"] = SweepSpace(**space)
        for key in ("shifts", "lp_l2"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def with_overrides(self, **kw: Any) -> Config:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def builtin_configs() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files(__package__).joinpath("configs").iterdir()
        if p.name.endswith(".json")
    )


def load_config(name_or_path: str) -> Config:
    """A built-in config by name (``image``, ``fast``) or a JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            return Config.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read config ({e})") from e
    names = builtin_configs()
    if name_or_path not in names:
        raise ValueError(
            f"unknown config {name_or_path!r}; built in: {', '.join(names)}, "
            "or give a path to a .json file"
        )
    text = resources.files(__package__).joinpath("configs", f"{name_or_path}.json").read_text()
    return Config.from_json(json.loads(text))
