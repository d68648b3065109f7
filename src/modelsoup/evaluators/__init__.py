"""Evaluators: the protocols recipes need (`protocols`), the built-in classification
evaluator, evaluators built from the command line, Hugging Face tasks (`hf`, imported on
demand) and torchrun helpers (`distributed`)."""

from .classification import ClassificationEvaluator, forward, load_state, model_identity
from .distributed import world
from .functions import FunctionEvaluator, build_evaluator, load_callable
from .logits import evaluation_from_logits, split_scores
from .protocols import (
    ChunkedLogits,
    Compare,
    CountingEvaluator,
    Evaluation,
    Evaluator,
    ExampleScores,
    Identified,
    LogitEvaluator,
    LossEvaluator,
    Metric,
    Parted,
    TokenExamples,
    TrainableEvaluator,
    beats,
    evaluate,
    identity_key,
    identity_of,
    outputs,
)

__all__ = [
    "ChunkedLogits",
    "ClassificationEvaluator",
    "Compare",
    "CountingEvaluator",
    "Evaluation",
    "Evaluator",
    "FunctionEvaluator",
    "Identified",
    "LogitEvaluator",
    "LossEvaluator",
    "TokenExamples",
    "Metric",
    "ExampleScores",
    "Parted",
    "TrainableEvaluator",
    "beats",
    "build_evaluator",
    "evaluate",
    "evaluation_from_logits",
    "forward",
    "identity_key",
    "identity_of",
    "load_callable",
    "load_state",
    "model_identity",
    "outputs",
    "split_scores",
    "world",
]
