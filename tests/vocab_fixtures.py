"""Tiny Llama folders whose vocabularies differ as fine-tunes' do: a base, one fine-tune
that added a ``<pad>`` token and one that added a chat token (``<|im_start|>``), each
saved with its tokenizer (transformers' ``resize_token_embeddings``)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "log", "fast", "slow", "red", "blue"]
LLAMA = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False,
)  # fmt: skip


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def _nudge(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def sweep(root: Path, chat_template: str | None = "{{ messages }}") -> dict[str, Path]:
    """``base``, ``pad`` (added ``<pad>`` as its pad token), ``chat`` (added the special
    ``<|im_start|>`` and a chat template), ``pad2`` (``<pad>`` too), ``padded`` (``<pad>``,
    its embeddings padded to a multiple of 8 rows: 24) and ``plain`` and ``plain2`` (the
    base's vocabulary)."""
    torch.manual_seed(0)
    tok = tokenizer()
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tok), **LLAMA))
    out = {"base": root / "base"}
    base.save_pretrained(out["base"])
    tok.save_pretrained(out["base"])
    names = ("pad", "chat", "plain", "pad2", "plain2", "padded")
    for seed, name in enumerate(names, start=1):
        t = tokenizer()
        if name.startswith("pad"):
            t.add_special_tokens({"pad_token": "<pad>"})
        elif name == "chat":
            t.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
            t.chat_template = chat_template
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tok), **LLAMA))
        m.load_state_dict(base.state_dict())
        if len(t) != len(tok):
            multiple = 8 if name == "padded" else None
            m.resize_token_embeddings(len(t), pad_to_multiple_of=multiple, mean_resizing=False)
        _nudge(m, seed)
        out[name] = root / name
        m.save_pretrained(out[name])
        t.save_pretrained(out[name])
    return out


if __name__ == "__main__":
    import sys

    print(sweep(Path(sys.argv[1])))
