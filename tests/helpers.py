"""Tiny models and checkpoints built inside the tests (no downloads, no blobs in git)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


class TinyNet(nn.Module):
    """Embedding, a linear layer with BatchNorm, and an output head tied to the embedding."""

    def __init__(self, vocab: int = 11, dim: int = 8, tied: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(tokens)))


def make_model(seed: int, tied: bool = True) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(tied=tied)


def finetunes(
    k: int,
    *,
    base_seed: int = 0,
    tied: bool = False,
    scale: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> list[dict[str, torch.Tensor]]:
    """k state dicts near one initialization, as fine-tunes of one pretrained model are."""
    out = []
    for i in range(k):
        model = make_model(base_seed, tied=tied)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))
        sd = {
            n: (t.to(dtype) if t.is_floating_point() else t) for n, t in model.state_dict().items()
        }
        out.append(sd)
    return out


def untie(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}


def write_hf_folder(
    folder: Path, sd: dict[str, torch.Tensor], *, shards: int = 1, fmt: str = "safetensors"
) -> Path:
    """A Hugging Face-style model folder: config, tokenizer file and (sharded) weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden": 8}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"not copied")
    names = list(sd)
    groups = [names[i::shards] for i in range(shards)]
    suffix = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups):
        fname = (
            f"{stem}.{suffix}" if shards == 1 else f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
        )
        part = {n: sd[n].contiguous() for n in group}
        if fmt == "safetensors":
            save_file(part, folder / fname, metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update({n: fname for n in group})
    if shards > 1:
        (folder / f"{stem}.{suffix}.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )
    return folder


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def vectors_at_angle(
    theta_deg: float, n: int, norms: tuple[float, float], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 vectors of the given norms at exactly ``theta_deg`` degrees."""
    u = torch.randn(n, dtype=torch.float64, generator=g)
    v = torch.randn(n, dtype=torch.float64, generator=g)
    u /= u.norm()
    v -= (v @ u) * u
    v /= v.norm()
    t = math.radians(theta_deg)
    return norms[0] * u, norms[1] * (math.cos(t) * u + math.sin(t) * v)
