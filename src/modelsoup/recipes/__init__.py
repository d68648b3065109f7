"""The soup recipes, one per module, registered in `RECIPES` (read by the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
}

__all__ = ["RECIPES", "Recipe", "uniform_soup"]
