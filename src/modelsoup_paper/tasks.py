"""The experiment's tasks: which data, which pretrained network (config key ``task``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from .config import Config
from .data import TaskData, load_image_data, mobilenet_weights


@dataclass
class Task:
    """Data, a factory for the architecture, and how to put the pretrained weights in it.

    ``build()`` returns the network with an untrained head; ``load_backbone(model)`` loads
    the pretrained weights into everything but the head (``model.classifier``), which the
    linear probe then fits; ``backbone_id`` identifies those weights in cache keys.
    """

    name: str
    num_classes: int
    data: TaskData
    build: Callable[[], nn.Module]
    load_backbone: Callable[[nn.Module], None]
    backbone_id: str


def image_task(config: Config) -> Task:
    """MobileNetV2 (ImageNet weights) on MNIST, shifted to UCI digits and corruptions."""
    from .mobilenet import build

    weights = mobilenet_weights()

    def load_backbone(model: nn.Module) -> None:
        pretrained = torch.load(weights, map_location="cpu", weights_only=True)
        backbone = {k: v for k, v in pretrained.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        assert not unexpected and set(missing) == {"classifier.1.weight", "classifier.1.bias"}

    data = load_image_data(
        config.resolution, config.train, config.val, config.test, config.shifts, config.shift_size
    )
    return Task(
        "image",
        10,
        data,
        partial(build, 10),  # picklable: worker processes build it too
        load_backbone,
        f"mobilenet_v2:{weights.stat().st_size}",
    )


def text_task(config: Config) -> Task:
    """MiniLM (sentence-encoder weights) on airline tweets, shifted to other topics."""
    from .text import LABELS, MiniLMClassifier, load_minilm_backbone, load_text_data, minilm_path

    data = load_text_data(
        config.train, config.val, config.test, config.shifts, config.shift_size, config.max_length
    )
    size = (minilm_path() / "model.safetensors").stat().st_size
    return Task(
        "text",
        len(LABELS),
        data,
        partial(MiniLMClassifier, len(LABELS)),
        load_minilm_backbone,
        f"all-MiniLM-L6-v2:{size}",
    )


TASKS: dict[str, Callable[[Config], Task]] = {"image": image_task, "text": text_task}


def load_task(config: Config) -> Task:
    """The config's task; with ``config.certify``, that fraction of val is carved out
    as the ``certify`` split (the same examples for every seed of the sweep)."""
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose from {sorted(TASKS)}")
    task = TASKS[config.task](config)
    if config.certify:
        task = replace(task, data=task.data.with_certify(config.certify))
    return task
