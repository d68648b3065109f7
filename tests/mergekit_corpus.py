"""Tiny Llama and Mistral folders standing in for the models that published mergekit
configurations name, and the corpus of those configurations (tests/mergekit_corpus/).

Each configuration is kept as it was published, but for the model names, which
`substitute` replaces by these folders: every name is assigned, by the order in
which it first appears, to a base (the first name of a config's base_model, or the
first name) and fine-tunes of one family (Mistral when the config names one, else
Llama). Each folder has 8 layers, so gradients and slices have layers to work on."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers
from vocab_fixtures import tokenizer

CORPUS = Path(__file__).parent / "mergekit_corpus"
LAYERS = 8
SHAPE = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False,
)  # fmt: skip
FINETUNES = 4


def folders(root: Path) -> dict[str, list[Path]]:
    """{"llama": [base, ft1, ...], "mistral": [...]}: float32 folders with a tokenizer,
    fine-tunes nudged from the base by different seeds (some entries left equal, as a
    fine-tune leaves frozen weights)."""
    out = {}
    for family, cls, cfg in (
        ("llama", transformers.LlamaForCausalLM, transformers.LlamaConfig),
        ("mistral", transformers.MistralForCausalLM, transformers.MistralConfig),
    ):
        torch.manual_seed(0 if family == "llama" else 1)
        tok = tokenizer()
        base = cls(cfg(vocab_size=len(tok), **SHAPE))
        paths = []
        for i in range(FINETUNES + 1):
            m = cls(cfg(vocab_size=len(tok), **SHAPE))
            m.load_state_dict(base.state_dict())
            if i:
                g = torch.Generator().manual_seed(100 * i + len(family))
                with torch.no_grad():
                    for p in m.parameters():
                        step = 0.02 * torch.randn(p.shape, generator=g)
                        p.add_(step * (torch.rand(p.shape, generator=g) > 0.1))
            path = root / f"{family}-{i}"
            m.save_pretrained(path)
            tok.save_pretrained(path)
            paths.append(path)
        out[family] = paths
    return out


MODEL = re.compile(r"(?:model|base_model):\s*([A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+)")


def substitute(text: str, fixtures: dict[str, list[Path]]) -> str:
    """The configuration with every hub name replaced by a local folder (see the module)."""
    names = list(dict.fromkeys(MODEL.findall(text)))
    base = re.search(r"^base_model:\s*(\S+)", text, re.M)
    family = "mistral" if re.search(r"mistral", text, re.I) else "llama"
    order = ([base.group(1)] if base else []) + [n for n in names if not base or n != base.group(1)]
    paths = fixtures[family]
    if len(order) > len(paths):
        raise ValueError(f"{len(order)} models named, {len(paths)} stand-ins")
    for name, path in zip(order, paths if base else paths[1:]):
        text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])", str(path), text)
    return text
