"""Built-in evaluators for Hugging Face models: ``--task text-classification`` and
``--task image-classification``, and the dispatch of every ``--task`` (the language-model
tasks are built in `hf_lm`).

The architecture comes from the first ingredient's folder (``config.json``, built with
``AutoModelFor...from_config``: no weights are loaded from it, every soup's are), the
tokenizer or image processor from the same folder, and the held-out examples from a local
table (CSV, TSV, JSON lines or Parquet, read with pandas) whose columns the flags name.
Labels may be integers or the names in the config's ``label2id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from .classification import ClassificationEvaluator
from .hf_folders import (
    HFLoader,
    build_model,
    column,
    config_hash,
    from_folder,
    model_folder,
    read_table,
    texts_of,
)
from .hf_lm import causal_lm_evaluator, fit_length, multiple_choice_evaluator
from .protocols import Metric

HF_TASKS = ("text-classification", "image-classification", "causal-lm", "multiple-choice")


def encode_labels(values: Any, config: Any, path: str) -> torch.Tensor:
    """Integer labels, or names mapped through ``config.label2id``; checked against the
    model's number of labels."""
    n = int(config.num_labels)
    if values.dtype.kind in "iu":
        y = torch.tensor(values.to_numpy(), dtype=torch.long)
    else:
        label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
        unknown = sorted({str(v) for v in values} - set(label2id))
        if unknown:
            raise SoupError(
                f"{path}: labels {unknown[:5]} are not in the model's label2id "
                f"{sorted(label2id)}; use those names or the integer ids 0..{n - 1}"
            )
        y = torch.tensor([label2id[str(v)] for v in values], dtype=torch.long)
    if len(y) == 0:
        raise SoupError(f"{path}: the table has no rows")
    bad = (y < 0) | (y >= n)
    if bool(bad.any()):
        raise SoupError(
            f"{path}: label {int(y[bad][0])} is outside 0..{n - 1} (the model has {n} labels)"
        )
    return y


class TensorDictDataset(Dataset):
    """Examples whose inputs are a dict of equally long tensors (model keyword arguments)."""

    def __init__(self, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor):
        self.inputs, self.labels = dict(inputs), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.inputs.items()}, self.labels[i]


class HFClassificationEvaluator(ClassificationEvaluator):
    """A `ClassificationEvaluator` for a transformers model, loading states with
    `HFLoader`."""

    _loader: HFLoader | None = None

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        if self._loader is None:
            self._loader = HFLoader()
        self._loader(self.model, state)
        if self.prepare is not None:
            self.prepare(self.model)
        self.model.eval()


def hf_evaluator(
    task: str,
    first: Ingredient,
    data: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    image_column: str = "image",
    max_length: int | None = None,
    metric: Metric | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
) -> Any:
    """The evaluator ``--task`` describes, on the held-out table ``data`` (split "val"),
    scored by ``metric``: accuracy or loss for classifiers, accuracy or acc_norm for
    multiple choice, loss (the only one) for a causal language model; None: the first."""

    if task not in HF_TASKS:
        raise SoupError(f"{option('task')} must be one of {HF_TASKS}, got {task!r}")
    if metric is None:  # the task's own
        metric = "loss" if task == "causal-lm" else "accuracy"
    if task == "multiple-choice":  # acc, or acc_norm with metric="acc_norm"
        return multiple_choice_evaluator(
            first,
            data,
            normalize=metric == "acc_norm",
            batch_size=batch_size,
            device=device,
            eval_dtype=eval_dtype,
        )
    if task == "causal-lm":  # scored by its token loss: no other metric is offered
        if metric != "loss":
            raise SoupError(
                f"a causal language model is scored by its token loss; metric {metric!r} "
                f"cannot be computed (drop {option('metric', flag='--evaluator')}, or give "
                f"{option('metric', 'loss', flag='--evaluator')})"
            )
        return causal_lm_evaluator(
            first,
            data,
            text_column=text_column,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            eval_dtype=eval_dtype,
        )
    columns = {"text": text_column, "text_pair": text_pair_column, "label": label_column,
               "image": image_column}  # fmt: skip
    return _classifier(
        task, first, data, columns, max_length, metric=metric, batch_size=batch_size,
        device=device,
    )  # fmt: skip


def _classifier(
    task: str,
    first: Ingredient,
    data: str,
    columns: dict[str, Any],
    max_length: int | None,
    **options: Any,
) -> HFClassificationEvaluator:
    """A text or image classifier from the first ingredient's folder, on the table
    ``data`` whose ``columns`` name the text (and its pair), the label and the image;
    ``options`` as `HFClassificationEvaluator` (metric, batch_size, device)."""
    folder = model_folder(first)
    model, config = build_model(task, folder)
    table = read_table(data)
    y = encode_labels(column(table, columns["label"], data, option("label_column")), config, data)
    if task == "text-classification":
        max_length = fit_length(max_length, _positions(config), folder)
        inputs = _text_inputs(
            folder, table, data, columns["text"], columns["text_pair"], max_length
        )
    else:
        inputs = _image_inputs(folder, table, data, columns["image"])
    identity = {
        "task": task,
        "config": config_hash(folder),
        "data_file": str(Path(data).resolve()),
        "columns": columns,
        "max_length": max_length,
    }
    return HFClassificationEvaluator(
        model, TensorDictDataset(inputs, y), identity=identity, **options
    )


def _positions(config: Any) -> int:
    """The longest input a classifier's config allows (512 when it does not say)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return 512


def _text_inputs(
    folder: Path, table: Any, data: str, text_column: str, pair_column: str | None, length: int
) -> dict[str, torch.Tensor]:
    """The table's texts (and text pairs), tokenized by the folder's tokenizer."""
    import transformers

    tok = from_folder(transformers.AutoTokenizer, folder, "tokenizer")
    texts = texts_of(table, text_column, data, option("text_column"))
    pairs = None
    if pair_column:
        pairs = texts_of(table, pair_column, data, option("text_pair_column"))
    enc = tok(texts, pairs, truncation=True, max_length=length, padding=True, return_tensors="pt")
    return {k: v for k, v in enc.items()}


def _image_inputs(
    folder: Path, table: Any, data: str, image_column: str
) -> dict[str, torch.Tensor]:
    """The table's images (paths relative to the table's folder), as the folder's image
    processor prepares them."""
    import transformers
    from PIL import Image

    proc = from_folder(transformers.AutoImageProcessor, folder, "image_processor")
    root = Path(data).parent
    images = []
    for p in column(table, image_column, data, option("image_column")):
        path = Path(p) if Path(p).is_absolute() else root / p
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise SoupError(f"{data}: cannot open image {path} ({e})") from e
    return {"pixel_values": proc(images, return_tensors="pt")["pixel_values"]}
