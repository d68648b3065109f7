"""modelsoup: model soups from checkpoints, streamed tensor by tensor.

The public API: open checkpoints as lazy `Ingredient` handles, combine them with the
streamed arithmetic (a combination is itself an ingredient), and `save` the result.

>>> import modelsoup as ms
>>> ings = [ms.open_ingredient(p) for p in ["a.safetensors", "b.safetensors"]]  # doctest: +SKIP
>>> ms.save(ms.uniform_soup(ings), "soup.safetensors")                          # doctest: +SKIP
"""

__version__ = "0.1.0"

from .arithmetic import (
    Combination,
    RunningMean,
    angle,
    cosine,
    dot,
    gram,
    interpolate,
    linear_combination,
    norm,
    task_vector,
    weighted_average,
)
from .checks import check_compatible
from .errors import CheckpointError, MismatchError, NonFiniteError, SoupError
from .evaluation import ClassificationEvaluator, Evaluation, Evaluator, FunctionEvaluator
from .ingredients import Ingredient, StateDictIngredient, open_ingredient
from .layout import Layout, TensorSpec
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
from .save import materialize, save

__all__ = [
    "RECIPES",
    "CheckpointError",
    "ClassificationEvaluator",
    "Combination",
    "Evaluation",
    "Evaluator",
    "FunctionEvaluator",
    "GreedyResult",
    "LearnedResult",
    "Ingredient",
    "Layout",
    "MismatchError",
    "NonFiniteError",
    "RunningMean",
    "SoupError",
    "StateDictIngredient",
    "TensorSpec",
    "angle",
    "check_compatible",
    "cosine",
    "dot",
    "gram",
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
