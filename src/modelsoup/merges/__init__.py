"""Weight-space merges that need no evaluator, one per module: uniform (and weighted)
averages, task arithmetic, TIES and DARE, SLERP, Model Stock and WiSE-FT; `tune` is
the held-out search over a merge's λ or density."""

from .model_stock import model_stock
from .slerp import slerp
from .task_arithmetic import task_arithmetic
from .ties import dare, ties
from .uniform import uniform_soup
from .wiseft import wise_ft, wiseft_scan

__all__ = [
    "dare",
    "model_stock",
    "slerp",
    "task_arithmetic",
    "ties",
    "uniform_soup",
    "wise_ft",
    "wiseft_scan",
]
