"""Built-in evaluators for Hugging Face models: ``--task text-classification`` and
``--task image-classification``.

The architecture comes from the first ingredient's folder (``config.json``, built with
``AutoModelFor...from_config``: no weights are loaded from it, every soup's are), the
tokenizer or image processor from the same folder, and the held-out examples from a local
table (CSV, TSV, JSON lines or Parquet, read with pandas) whose columns the flags name.
Labels may be integers or the names in the config's ``label2id``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError
from .classification import ClassificationEvaluator, load_state
from .protocols import Metric

HF_TASKS = ("text-classification", "image-classification", "causal-lm", "multiple-choice")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def model_folder(ingredient: Ingredient) -> Path:
    """The Hugging Face folder an ingredient comes from (the one holding config.json)."""
    folder = getattr(ingredient, "folder", None)
    candidates = [Path(folder)] if folder is not None else []
    candidates += [Path(f).parent for f in ingredient.files]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise SoupError(
        f"--task needs Hugging Face model folders (with config.json); {ingredient.source} has "
        "none next to it. Pass the save_pretrained / checkpoint-* folders, or describe the "
        "model with --model and --data instead"
    )


def read_table(path: str | os.PathLike) -> Any:
    """A pandas DataFrame from CSV, TSV, JSON lines (or a JSON array) or Parquet."""
    try:
        import pandas as pd
    except ImportError as e:
        raise SoupError("--task reads --data with pandas: pip install 'modelsoup[hf]'") from e
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise SoupError(
            f"{path}: --data for --task must be a table file ({', '.join(TABLE_SUFFIXES)})"
        )
    if not path.is_file():
        raise SoupError(f"{path}: no such data file")
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        text = path.read_text(encoding="utf-8").lstrip()
        return pd.read_json(path, lines=not text.startswith("["))
    except (ValueError, OSError, ImportError) as e:
        raise SoupError(f"{path}: cannot read the table ({e})") from e


def _column(table: Any, name: str, path: str, flag: str) -> Any:
    if name not in table.columns:
        raise SoupError(
            f"{path}: no column {name!r} (it has {list(table.columns)}); name it with {flag}"
        )
    return table[name]


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


def checkpoint_names(model: nn.Module) -> dict[str, str]:
    """``{name in a save_pretrained checkpoint: name in model.state_dict()}``.

    Recent transformers rename some architectures' tensors when saving (ViT's
    ``encoder.layer.0.attention.attention.key`` is ``layers.0.attention.k_proj`` in the
    model). The map is found by saving a copy of the model whose every floating tensor
    holds its own index as a constant, so each saved tensor names its source. A saved
    tensor made of several (a fused conversion) has no single source and is refused.
    """
    import copy
    import tempfile

    from ..checkpoints.read import open_ingredient

    probe = copy.deepcopy(model).float()
    names = [n for n, t in probe.state_dict().items() if t.is_floating_point()]
    with torch.no_grad():
        for i, n in enumerate(names):
            probe.state_dict()[n].fill_(float(i))
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        probe.save_pretrained(d)
        saved = open_ingredient(d)
        for name in saved.layout.names:
            t = saved.get(name)
            if not t.is_floating_point():
                out[name] = name
                continue
            values = torch.unique(t)
            if len(values) != 1 or not float(values[0]).is_integer():
                raise SoupError(
                    f"transformers saves {name!r} of {type(model).__name__} fused from several "
                    "tensors; modelsoup cannot evaluate it with --task. Use --model and --data"
                )
            out[name] = names[int(values[0])]
    return out


class HFLoader:
    """Puts a soup's state into a transformers model. Soups carry the names of the
    checkpoints (as ``save_pretrained`` writes them); when those differ from the model's
    own (see `checkpoint_names`) they are renamed, and tensors that ``save_pretrained``
    leaves out because they are tied to another are tied again after loading."""

    def __init__(self) -> None:
        self._rename: dict[str, str] | None = None

    def __call__(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        own = model.state_dict()
        if self._rename is None and any(k not in own for k in state):
            self._rename = checkpoint_names(model)
        if self._rename:
            state = {self._rename.get(k, k): v for k, v in state.items()}
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if tied and any(k not in state for k in own):
            state = {**{k: own[k] for k in own if k in tied and k not in state}, **state}
        load_state(model, state)
        if tied and hasattr(model, "tie_weights"):
            model.tie_weights()


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


def _build_model(task: str, folder: Path) -> tuple[nn.Module, Any]:
    try:
        import transformers
    except ImportError as e:
        raise SoupError("--task needs transformers: pip install 'modelsoup[hf]'") from e
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        auto = {
            "text-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "causal-lm": transformers.AutoModelForCausalLM,
            "multiple-choice": transformers.AutoModelForCausalLM,
        }[task]
        model = auto.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        raise SoupError(f"{folder}: cannot build a {task} model from config.json ({e})") from e
    return model, config


def config_hash(folder: Path) -> str:
    """A hash of the folder's config.json (part of every --task evaluator's identity)."""
    return hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the pad token, else end-of-text, else 0."""
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    return int(pad or 0)


def _from_folder(auto: Any, folder: Path, what: str) -> Any:
    """``auto.from_pretrained(folder)`` offline, or an error that says how to fix it."""
    try:
        return auto.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SoupError(
            f"{folder}: no {what.replace('_', ' ')} to read ({e}); save it beside the weights "
            f"with {what}.save_pretrained(folder)"
        ) from e


def hf_evaluator(
    task: str,
    first: Ingredient,
    data: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    image_column: str = "image",
    max_length: int = 256,
    metric: Metric = "accuracy",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
) -> Any:
    """The evaluator ``--task`` describes, on the held-out table ``data`` (split "val")."""
    import transformers

    if task not in HF_TASKS:
        raise SoupError(f"--task must be one of {HF_TASKS}, got {task!r}")
    if task == "multiple-choice":  # acc, or acc_norm with metric="acc_norm"
        return multiple_choice_evaluator(
            first,
            data,
            normalize=metric == "acc_norm",
            batch_size=batch_size,
            device=device,
            eval_dtype=eval_dtype,
        )
    if task == "causal-lm":  # scored by its token loss, whatever ``metric`` says
        return causal_lm_evaluator(
            first,
            data,
            text_column=text_column,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            eval_dtype=eval_dtype,
        )
    folder = model_folder(first)
    model, config = _build_model(task, folder)
    table = read_table(data)
    y = encode_labels(_column(table, label_column, data, "--label-column"), config, data)
    if task == "text-classification":
        tok = _from_folder(transformers.AutoTokenizer, folder, "tokenizer")
        texts = _column(table, text_column, data, "--text-column").astype(str).tolist()
        pairs = None
        if text_pair_column:
            pairs = _column(table, text_pair_column, data, "--text-pair-column")
            pairs = pairs.astype(str).tolist()
        enc = tok(
            texts,
            pairs,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        inputs = {k: v for k, v in enc.items()}
    else:
        from PIL import Image

        proc = _from_folder(transformers.AutoImageProcessor, folder, "image_processor")
        root = Path(data).parent
        images = []
        for p in _column(table, image_column, data, "--image-column"):
            path = Path(p) if Path(p).is_absolute() else root / p
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            except OSError as e:
                raise SoupError(f"{data}: cannot open image {path} ({e})") from e
        inputs = {"pixel_values": proc(images, return_tensors="pt")["pixel_values"]}
    identity = {
        "task": task,
        "config": config_hash(folder),
        "data_file": str(Path(data).resolve()),
        "columns": {
            "text": text_column,
            "text_pair": text_pair_column,
            "label": label_column,
            "image": image_column,
        },
        "max_length": max_length,
    }
    return HFClassificationEvaluator(
        model,
        TensorDictDataset(inputs, y),
        metric=metric,
        batch_size=batch_size,
        device=device,
        identity=identity,
    )


def read_texts(path: str | os.PathLike, text_column: str) -> list[str]:
    """Examples of a causal LM: the lines of a ``.txt`` file (blank lines skipped), or
    the ``text_column`` of a table."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise SoupError(f"{path}: cannot read the text file ({e})") from e
    table = read_table(path)
    return _column(table, text_column, str(path), "--text-column").astype(str).tolist()


def causal_lm_evaluator(
    first: Ingredient,
    data: str,
    *,
    text_column: str = "text",
    max_length: int = 256,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
) -> Any:
    """``--task causal-lm``: AutoModelForCausalLM from the first ingredient's config (an
    adapter's: its base's), the tokenizer of that folder, the examples of ``data``
    (truncated to ``max_length`` tokens) as the held-out split "val"."""
    import transformers

    from .causal_lm import CausalLMEvaluator

    folder = model_folder(first)
    model, _ = _build_model("causal-lm", folder)
    tok = _from_folder(transformers.AutoTokenizer, folder, "tokenizer")
    texts = read_texts(data, text_column)
    if not texts:
        raise SoupError(f"{data}: no examples (empty lines are skipped)")
    ids = [tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    pad = pad_id(tok)
    identity = {
        "task": "causal-lm",
        "config": config_hash(folder),
        "data_file": str(Path(data).resolve()),
        "text_column": None if Path(data).suffix.lower() == ".txt" else text_column,
        "max_length": max_length,
        "eval_dtype": str(eval_dtype) if eval_dtype else None,
    }
    return CausalLMEvaluator(
        model,
        {"val": ids},
        batch_size=batch_size,
        device=device,
        eval_dtype=eval_dtype,
        pad_id=pad,
        loader=HFLoader(),
        identity=identity,
    )


def context_length(config: Any, tokenizer: Any) -> int:
    """The longest sequence the model takes, found as lm-eval finds it: the config's
    ``n_positions``, ``max_position_embeddings`` or ``n_ctx``, else the tokenizer's
    ``model_max_length`` (when set), else 2048."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**12 else 2048


def multiple_choice_evaluator(
    first: Ingredient,
    data: str,
    *,
    normalize: bool = False,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
) -> Any:
    """``--task multiple-choice``: AutoModelForCausalLM from the first ingredient's
    config, its folder's tokenizer, the examples of the JSON-lines file ``data``
    (context, choices, gold), scored as lm-eval scores a multiple-choice task."""
    import transformers

    from .multiple_choice import MultipleChoiceEvaluator, read_examples

    folder = model_folder(first)
    model, config = _build_model("multiple-choice", folder)
    tok = _from_folder(transformers.AutoTokenizer, folder, "tokenizer")
    pad = pad_id(tok)
    identity = {
        "task": "multiple-choice",
        "config": config_hash(folder),
        "data_file": str(Path(data).resolve()),
        "eval_dtype": str(eval_dtype) if eval_dtype else None,
    }
    return MultipleChoiceEvaluator(
        model,
        tok,
        read_examples(data),
        normalize=normalize,
        batch_size=batch_size,
        device=device,
        eval_dtype=eval_dtype,
        pad_id=pad,
        max_length=context_length(config, tok),
        loader=HFLoader(),
        identity=identity,
    )


def lm_eval_evaluator(
    first: Ingredient,
    task: str,
    *,
    metric: str | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
    limit: int | None = None,
) -> Any:
    """``--lm-eval TASK``: AutoModelForCausalLM from the first ingredient's config and its
    folder's tokenizer, each soup scored by lm-eval on ``task`` (see `LMEvalEvaluator`)."""
    import transformers

    from .lm_eval import LMEvalEvaluator

    folder = model_folder(first)
    model, _ = _build_model("causal-lm", folder)
    if eval_dtype is not None:
        model = model.to(eval_dtype)
    tok = _from_folder(transformers.AutoTokenizer, folder, "tokenizer")
    identity = {
        "config": config_hash(folder),
        "eval_dtype": str(eval_dtype) if eval_dtype else None,
    }
    return LMEvalEvaluator(
        model,
        tok,
        task,
        metric=metric,
        batch_size=batch_size,
        device=str(device),
        limit=limit,
        loader=HFLoader(),
        identity=identity,
    )
