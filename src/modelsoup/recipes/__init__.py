"""The soup recipes, one per module, registered in `RECIPES` (read by the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .ensemble import greedy_ensemble
from .greedy import GreedyResult, greedy_soup
from .uniform import uniform_soup


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: its function, a one-line summary and the paper it follows."""

    function: Callable
    summary: str
    paper: str


RECIPES: dict[str, Recipe] = {
    "uniform": Recipe(
        uniform_soup,
        "average every ingredient (optionally with weights)",
        "Wortsman et al., Model soups, ICML 2022 (Table 2, uniform soup)",
    ),
    "greedy": Recipe(
        greedy_soup,
        "greedy soup: keep an ingredient only if the held-out score does not drop",
        "Wortsman et al., Model soups, ICML 2022 (Recipe 1)",
    ),
    "greedy_ensemble": Recipe(
        greedy_ensemble,
        "greedy ensemble: Recipe 1 over logit ensembles, from cached logits",
        "Wortsman et al., Model soups, ICML 2022 (Table 2, greedy ensemble)",
    ),
}

__all__ = ["RECIPES", "GreedyResult", "Recipe", "greedy_ensemble", "greedy_soup", "uniform_soup"]
