"""The evaluator-driven soups (greedy, ensembles, learned), registered in `RECIPES`; the
merges that need no evaluator are in `modelsoup.merges.registry.MERGES`.

The CLI loops over both: each entry is one command (its name), whose help and
description come from the entry's summary and paper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..soups.ensemble import ensemble_baselines
from ..soups.greedy import greedy_soup
from ..soups.learned import learned_soup


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: the library function its command calls, a one-line summary
    and the paper it follows."""

    function: Callable
    summary: str
    paper: str


RECIPES: dict[str, Recipe] = {
    "greedy": Recipe(
        greedy_soup,
        "greedy soup: keep an ingredient only if the held-out score does not drop",
        "Wortsman et al., Model soups, ICML 2022 (Recipe 1)",
    ),
    "ensemble": Recipe(
        ensemble_baselines,
        "baselines from cached logits: best on val, logit ensemble, greedy ensemble",
        "Wortsman et al., Model soups, ICML 2022 (Table 2)",
    ),
    "learned": Recipe(
        learned_soup,
        "learned soup: mixing weights (per model or per layer) fit on the held-out split",
        "Wortsman et al., Model soups, ICML 2022 (Appendix I, learned soup)",
    ),
}

__all__ = ["RECIPES", "Recipe"]
