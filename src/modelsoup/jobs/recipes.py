"""The soup recipes, one per module, registered in `RECIPES`.

The CLI loops over the registry: each entry is one command (its name), whose help and
description come from the entry's summary and paper, and which calls the entry's
function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..merges.model_stock import model_stock
from ..merges.slerp import slerp
from ..merges.task_arithmetic import task_arithmetic
from ..merges.ties import dare, ties
from ..merges.uniform import uniform_soup
from ..merges.wiseft import wise_ft
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
    "wiseft": Recipe(
        wise_ft,
        "WiSE-FT: interpolate a fine-tuned model or soup toward the pretrained weights",
        "Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022",
    ),
    "model-stock": Recipe(
        model_stock,
        "Model Stock: per-layer interpolation toward the base from the fine-tunes' angle",
        "Jang et al., Model Stock, ECCV 2024",
    ),
    "task-arithmetic": Recipe(
        task_arithmetic,
        "task arithmetic: the base plus lambda times the weighted sum of task vectors",
        "Ilharco et al., Editing models with task arithmetic, ICLR 2023",
    ),
    "ties": Recipe(
        ties,
        "TIES: trim task vectors to their largest entries, elect signs, merge what agrees",
        "Yadav et al., TIES-Merging, NeurIPS 2023",
    ),
    "dare": Recipe(
        dare,
        "DARE: drop task-vector entries at random and rescale, then add (or merge by sign)",
        "Yu et al., Language Models are Super Mario (DARE), ICML 2024",
    ),
    "slerp": Recipe(
        slerp,
        "SLERP: spherical interpolation between two models, tensor by tensor",
        "Shoemake, SIGGRAPH 1985, as mergekit's slerp",
    ),
}

__all__ = ["RECIPES", "Recipe"]
