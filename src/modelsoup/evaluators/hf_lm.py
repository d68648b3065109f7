"""Built-in evaluators for Hugging Face causal language models: ``--task causal-lm`` (the
token loss), ``--task multiple-choice`` (lm-eval's loglikelihood accuracy) and
``--lm-eval TASK`` (any lm-evaluation-harness task)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.ingredients import Ingredient
from ..errors import SoupError, option
from .hf_folders import (
    HFLoader,
    build_model,
    config_hash,
    from_folder,
    model_folder,
    pad_id,
    read_table,
    texts_of,
)


def read_texts(path: str | os.PathLike, text_column: str) -> list[str]:
    """Examples of a causal LM: the lines of a ``.txt`` file (blank lines skipped), or
    the ``text_column`` of a table."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SoupError(f"{path}: cannot read the text file ({e})") from e
        from .multiple_choice import text_lines

        return text_lines(text)
    table = read_table(path)
    texts = texts_of(table, text_column, str(path), option("text_column"))
    return [t for t in texts if t.strip()]  # empty rows skipped, as blank lines are


def head_tokens(tok: Any, text: str, n: int) -> list[int]:
    """``tok(text, truncation=True, max_length=n)["input_ids"]``, tokenizing only a prefix
    of a long text: a 20 MB line cut to 32 tokens is not tokenized whole.

    A prefix's first tokens are the whole text's once the cut is far past them: the
    prefix is taken when its first n + 8 tokens equal those of a prefix twice as long
    (tokenizers merge within a word, so the cut only changes tokens near it)."""
    size = 16 * (n + 16)
    while size < len(text):
        head = tok(text[:size], add_special_tokens=False)["input_ids"]
        longer = tok(text[: 2 * size], add_special_tokens=False)["input_ids"]
        if len(head) > n + 8 and head[: n + 8] == longer[: n + 8]:
            return tok(text[:size], truncation=True, max_length=n)["input_ids"]
        size *= 4
    return tok(text, truncation=True, max_length=n)["input_ids"]


def causal_lm_evaluator(
    first: Ingredient,
    data: str,
    *,
    text_column: str = "text",
    max_length: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    eval_dtype: torch.dtype | None = None,
) -> Any:
    """``--task causal-lm``: AutoModelForCausalLM from the first ingredient's config (an
    adapter's: its base's), the tokenizer of that folder, the examples of ``data``
    (truncated to ``max_length`` tokens: default the smaller of 256 and the model's
    positions) as the held-out split "val". Data with no token to predict (every line
    shorter than two tokens) is refused."""
    import transformers

    from .causal_lm import CausalLMEvaluator

    folder = model_folder(first)
    model, config = build_model("causal-lm", folder)
    tok = from_folder(transformers.AutoTokenizer, folder, "tokenizer")
    max_length = fit_length(max_length, context_length(config, tok), folder)
    texts = read_texts(data, text_column)
    if not texts:
        raise SoupError(f"{data}: no examples (empty lines are skipped)")
    ids = [x for t in texts if (x := head_tokens(tok, t, max_length))]  # no token: no example
    if all(len(x) < 2 for x in ids):
        raise SoupError(
            f"{data}: no token to predict: every example is shorter than 2 tokens (with "
            f"{option('max_length', max_length)}); a language model is scored on the tokens "
            "after the first"
        )
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


DEFAULT_MAX_LENGTH = 256


def fit_length(asked: int | None, context: int, folder: Path) -> int:
    """Tokens per example: ``asked``, or the smaller of 256 and the model's ``context``;
    more than the model takes is refused (positions past it do not exist)."""
    if asked is None:
        return min(DEFAULT_MAX_LENGTH, context)
    if asked > context:
        raise SoupError(
            f"{option('max_length', asked)} is more than the {context} positions of the model in "
            f"{folder}; give at most {context} (the default is the smaller of 256 and that)"
        )
    return asked


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
    model, config = build_model("multiple-choice", folder)
    tok = from_folder(transformers.AutoTokenizer, folder, "tokenizer")
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
    trust_code: bool = False,
) -> Any:
    """``--lm-eval TASK``: AutoModelForCausalLM from the first ingredient's config and its
    folder's tokenizer, each soup scored by lm-eval on ``task`` (see `LMEvalEvaluator`)."""
    import transformers

    from .lm_eval import LMEvalEvaluator

    folder = model_folder(first)
    model, _ = build_model("causal-lm", folder)
    if eval_dtype is not None:
        model = model.to(eval_dtype)
    tok = from_folder(transformers.AutoTokenizer, folder, "tokenizer")
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
        trust_code=trust_code,
    )
