"""modelsoup: model soups from checkpoints, streamed tensor by tensor.

The public API: open checkpoints as lazy `Ingredient` handles, combine them with the
streamed arithmetic (a combination is itself an ingredient), and `save` the result.

>>> import modelsoup as ms
>>> ings = [ms.open_ingredient(p) for p in ["a.safetensors", "b.safetensors"]]  # doctest: +SKIP
>>> ms.save(ms.uniform_soup(ings), "soup.safetensors")                          # doctest: +SKIP
"""

__version__ = "0.1.0"

from .checkpoints.ingredients import Ingredient, StateDictIngredient, open_ingredient
from .checkpoints.layout import Layout, TensorSpec
from .checkpoints.save import materialize, save
from .errors import CheckpointError, MismatchError, NonFiniteError, SoupError
from .evaluators import (
    ClassificationEvaluator,
    CountingEvaluator,
    Evaluation,
    Evaluator,
    FunctionEvaluator,
    Identified,
    LogitEvaluator,
    TrainableEvaluator,
)
from .ops.arithmetic import (
    Combination,
    RunningMean,
    interpolate,
    linear_combination,
    task_vector,
    weighted_average,
)
from .ops.checks import check_compatible
from .ops.geometry import angle, cosine, dot, gram, norm
from .recipes import (
    RECIPES,
    GreedyResult,
    LearnedResult,
    greedy_soup,
    learned_soup,
    model_stock,
    uniform_soup,
    wise_ft,
)
from .runs.pipelines import ensemble_run, greedy_run

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ClassificationEvaluator",
    "Combination",
    "CountingEvaluator",
    "Evaluation",
    "Evaluator",
    "FunctionEvaluator",
    "GreedyResult",
    "Identified",
    "Ingredient",
    "LearnedResult",
    "LogitEvaluator",
    "Layout",
    "MismatchError",
    "NonFiniteError",
    "RunningMean",
    "SoupError",
    "StateDictIngredient",
    "TensorSpec",
    "TrainableEvaluator",
    "angle",
    "check_compatible",
    "cosine",
    "dot",
    "ensemble_run",
    "gram",
    "greedy_run",
    "greedy_soup",
    "interpolate",
    "learned_soup",
    "linear_combination",
    "materialize",
    "model_stock",
    "norm",
    "open_ingredient",
    "save",
    "task_vector",
    "uniform_soup",
    "weighted_average",
    "wise_ft",
]
