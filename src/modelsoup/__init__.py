"""modelsoup: model soups from checkpoints, streamed tensor by tensor.

The public API: open checkpoints as lazy `Ingredient` handles, combine them with the
streamed arithmetic (a combination is itself an ingredient), and `save` the result.

>>> import modelsoup as ms
>>> ings = [ms.open_ingredient(p) for p in ["a.safetensors", "b.safetensors"]]  # doctest: +SKIP
>>> ms.save(ms.uniform_soup(ings), "soup.safetensors")                          # doctest: +SKIP
"""

from .checkpoints.extract import extract_lora
from .checkpoints.ingredients import NO_ORIGIN, Ingredient, Origin, StateDictIngredient
from .checkpoints.layout import Layout, TensorSpec
from .checkpoints.read import open_ingredient
from .checkpoints.save import save
from .checkpoints.stream import materialize
from .checkpoints.vocab import align_vocabulary
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
from .jobs.certify import HeldOut, split_heldout
from .jobs.pipelines import certify_soup, ensemble_run, greedy_run
from .jobs.prepare import Preparation, Prepared, prepare_inputs
from .jobs.recipes import RECIPES
from .jobs.run_folders import RunFolders
from .merges.arcee_fusion import arcee_fusion
from .merges.breadcrumbs import breadcrumbs, breadcrumbs_ties
from .merges.dare import dare
from .merges.della import della, della_linear
from .merges.karcher import karcher
from .merges.model_stock import model_stock, model_stock_mergekit
from .merges.multislerp import multislerp
from .merges.nearswap import nearswap
from .merges.nuslerp import nuslerp
from .merges.passthrough import passthrough
from .merges.ram import ram, ram_plus
from .merges.sce import sce
from .merges.slerp import slerp
from .merges.task_arithmetic import task_arithmetic
from .merges.ties import ties
from .merges.uniform import uniform_soup
from .merges.wiseft import wise_ft, wiseft_scan
from .ops.arithmetic import (
    Combination,
    interpolate,
    linear_combination,
    task_vector,
    weighted_average,
)
from .ops.checks import check_compatible
from .ops.geometry import angle, cosine, dot, gram, norm
from .ops.running_mean import RunningMean
from .ops.select import choose, substitute
from .soups import GreedyResult, LearnedResult, greedy_soup, learned_soup
from .version import package_version

__version__ = package_version()

__all__ = [
    "Preparation",
    "Prepared",
    "prepare_inputs",
    "RunFolders",
    "arcee_fusion",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare",
    "della",
    "della_linear",
    "karcher",
    "model_stock_mergekit",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "ram",
    "ram_plus",
    "sce",
    "slerp",
    "task_arithmetic",
    "ties",
    "wiseft_scan",
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
    "align_vocabulary",
    "angle",
    "check_compatible",
    "choose",
    "cosine",
    "dot",
    "ensemble_run",
    "extract_lora",
    "gram",
    "greedy_run",
    "Origin",
    "NO_ORIGIN",
    "HeldOut",
    "split_heldout",
    "certify_soup",
    "greedy_soup",
    "interpolate",
    "learned_soup",
    "linear_combination",
    "materialize",
    "model_stock",
    "norm",
    "open_ingredient",
    "save",
    "substitute",
    "task_vector",
    "uniform_soup",
    "weighted_average",
    "wise_ft",
]
