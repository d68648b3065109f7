"""The evaluator-driven recipes: the greedy soup, the learned soup and the ensemble
baselines. They are handed their journal and cache by their caller (see `jobs`) and
import nothing from the store."""

from .ensemble import ensemble_baselines, greedy_ensemble
from .greedy import GreedyResult, greedy_soup
from .learned import LearnedResult, learned_soup

__all__ = [
    "GreedyResult",
    "LearnedResult",
    "ensemble_baselines",
    "greedy_ensemble",
    "greedy_soup",
    "learned_soup",
]
