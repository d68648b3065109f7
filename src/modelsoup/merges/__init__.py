"""Weight-space merges that need no evaluator, one per module: uniform (and weighted)
averages, task arithmetic, TIES, DARE, DELLA, Model Breadcrumbs, SLERP, NuSLERP,
Multi-SLERP, NearSwap, SCE, Karcher, RAM, RAM+, Arcee Fusion, Model Stock, passthrough
and WiSE-FT; `per_tensor.per_tensor` runs any of them with parameters that vary by
tensor (gradients, filters). `registry.MERGES` is the table the CLI, `compare` and
mergekit configs follow; `tune` is the held-out search over a merge's parameters."""

from .arcee_fusion import arcee_fusion
from .breadcrumbs import breadcrumbs, breadcrumbs_ties
from .dare import dare
from .della import della, della_linear
from .karcher import karcher
from .model_stock import model_stock, model_stock_mergekit
from .multislerp import multislerp
from .nearswap import nearswap
from .nuslerp import nuslerp
from .passthrough import passthrough
from .ram import ram, ram_plus
from .sce import sce
from .slerp import slerp
from .task_arithmetic import task_arithmetic
from .ties import ties
from .uniform import uniform_soup
from .wiseft import wise_ft, wiseft_scan

__all__ = [
    "arcee_fusion",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare",
    "della",
    "della_linear",
    "model_stock",
    "model_stock_mergekit",
    "karcher",
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
    "uniform_soup",
    "wise_ft",
    "wiseft_scan",
]
