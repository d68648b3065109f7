"""The one table of weight-space merges: what each needs and which parameters it takes.

Everything else follows from `MERGES`: the CLI builds one command per entry (its
arguments from the entry's inputs and parameters), `compare` tunes every entry that fits
k fine-tunes on a base and declares a grid, `modelsoup merge CONFIG.yml` maps mergekit's
method names and parameters onto the entries, and docs/commands.md is checked against it
by a test. Adding a method is one module with its function and one `Merge` here.
"""

from __future__ import annotations

from .arcee_fusion import arcee_fusion
from .breadcrumbs import breadcrumbs, breadcrumbs_ties
from .dare import dare
from .della import della, della_linear
from .karcher import karcher
from .merge_spec import Merge, Param
from .model_stock import model_stock_merge
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
from .wiseft import DEFAULT_ALPHAS, wise_ft

LAMBDAS = (0.2, 0.4, 0.6, 0.8, 1.0)
DENSITIES = (0.2, 0.5, 0.8)


LAM = Param("lam", 1.0, "the task vectors' scale", grid=LAMBDAS, flag="--lambda", mergekit="lambda")
WEIGHT_NOTE = "one weight per ingredient (default 1)"


def density(default: float, grid: tuple[float, ...] = DENSITIES) -> Param:
    return Param(
        "density", default, "the fraction of entries kept", grid=grid, mergekit="density",
        bounds=(0, 1), open_low=True, per_model=True,
    )  # fmt: skip


EPSILON = Param(
    "epsilon", 1e-5, "the size of change an entry counts from", mergekit="epsilon", bounds=(0, None)
)
SEED = Param("seed", 0, "seed of the random drops", kind=int, bounds=(0, 2**63 - 1))


def normalize(default: bool) -> Param:
    return Param(
        "normalize", default, "divide by the summed weights (of the agreeing entries)",
        kind=bool, mergekit="normalize",
    )  # fmt: skip


MERGES: dict[str, Merge] = {
    m.name: m
    for m in (
        Merge(
            name="uniform", label="uniform soup", function=uniform_soup,
            summary="average every ingredient (optionally with weights)",
            paper="Wortsman et al., Model soups, ICML 2022 (Table 2, uniform soup)",
            formula="mean_i theta_i, or sum_i w_i theta_i", inputs="models",
            params=(
                Param("arithmetic", "mean", "mean: running mean (a soup of identical "
                      "checkpoints is that checkpoint bit for bit); sum: sum then divide, "
                      "bit-identical to mergekit's linear merge", kind=("mean", "sum")),
            ),
            weights=True, min_models=2, casts=True, tensor_weights=True,
            mergekit={"linear": {"arithmetic": "sum"}},
        ),
        Merge(
            name="task-arithmetic", label="task arithmetic", function=task_arithmetic,
            summary="task arithmetic: the base plus lambda times the weighted sum of task vectors",
            paper="Ilharco et al., Editing models with task arithmetic, ICLR 2023",
            formula="theta0 + lambda * sum_i w_i (theta_i - theta0)", inputs="models+base",
            params=(
                LAM,
                Param("arithmetic", "anchored", "anchored: on the largest coefficient (a "
                      "merge of identical checkpoints is that checkpoint bit for bit); sum: "
                      "base + lambda * sum w_i tau_i in that order, bit-identical to "
                      "mergekit's task_arithmetic", kind=("anchored", "sum")),
            ),
            weights=True, casts=True, tensor_weights=True, precision=True,
            mergekit={"task_arithmetic": {"arithmetic": "sum"}},
        ),
        Merge(
            name="ties", label="TIES", function=ties,
            summary="TIES: trim task vectors to their largest entries, elect signs, merge "
            "what agrees",
            paper="Yadav et al., TIES-Merging, NeurIPS 2023",
            formula="trim each task vector to its top --density by magnitude, elect a sign "
            "per entry (the sign of the weighted sum), average the agreeing entries, add "
            "lambda times that", inputs="models+base",
            params=(LAM, density(0.5), normalize(True)), weights=True, precision=True,
            shared=lambda: {"thresholds": {}},
            mergekit={"ties": {"density": 1.0}},
        ),
        Merge(
            name="dare", label="DARE", function=dare,
            summary="DARE: drop task-vector entries at random and rescale, then add (or "
            "merge by sign)",
            paper="Yu et al., Language Models are Super Mario (DARE), ICML 2024",
            formula="drop each task-vector entry with probability 1 - --density, rescale the rest "
            "(by 1/density), then add (dare-linear) or merge by sign (--consensus: "
            "dare-ties)", inputs="models+base",
            params=(
                LAM, density(0.5),
                Param("consensus", False, "elect signs as TIES does (dare-ties)", kind=bool),
                normalize(False),
                Param("rescale", "density", "density: the paper's 1/density; l1: "
                      "mergekit's (the task vector's L1 norm); none",
                      kind=("density", "l1", "none")),
                SEED,
            ),
            weights=True, precision=True,
            mergekit={
                "dare_ties": {"consensus": True, "rescale": "l1", "density": 1.0},
                "dare_linear": {"rescale": "l1", "density": 1.0},
            },
        ),
        *(
            Merge(
                name=name, label=pretty, function=fn,
                summary=f"{pretty}: drop task-vector entries with a probability falling with their "
                f"magnitude, then {how}",
                paper="Deep et al., DELLA-Merging, 2024",
                formula="keep each entry of a task vector's row with probability from density - "
                "epsilon (smallest) to density + epsilon (largest), rescale to its L1 norm, "
                f"then {how}", inputs="models+base",
                params=(
                    LAM, density(0.5),
                    Param("epsilon", 0.15, "the spread of keep probabilities around the "
                          "density", mergekit="epsilon", bounds=(0, 0.5), per_model=True),
                    normalize(name == "della"),
                    Param("rescale", "l1", "l1: the kept entries scaled to the task "
                          "vector's L1 norm; none", kind=("l1", "none")),
                    SEED,
                ),
                weights=True, precision=True,
                mergekit={name.replace("-", "_"): {"density": 1.0}},
            )
            for name, fn, pretty, how in (
                ("della", della, "DELLA", "merge by sign (as TIES)"),
                ("della-linear", della_linear, "linear DELLA", "add"),
            )
        ),
        *(
            Merge(
                name=name, label=pretty, function=fn,
                summary=f"{pretty}: drop each task vector's smallest entries and its largest "
                f"outliers, then {how}",
                paper="Davari and Belilovsky, Model Breadcrumbs, ECCV 2024",
                formula="of each task vector, drop the top --gamma fraction by magnitude "
                f"(outliers) and the smallest, keeping --density, then {how}", inputs="models+base",
                params=(
                    LAM, density(0.9, (0.7, 0.8, 0.9)),
                    Param("gamma", 0.01, "the fraction of largest entries dropped",
                          mergekit="gamma", bounds=(0, 1), per_model=True),
                    normalize(False),
                    Param("rescale", "none", "l1: the kept entries scaled to the task "
                          "vector's L1 norm; none", kind=("l1", "none")),
                ),
                weights=True, precision=True,
                mergekit={name.replace("-", "_"): {"density": 1.0}},
            )
            for name, fn, pretty, how in (
                ("breadcrumbs", breadcrumbs, "Model Breadcrumbs", "add"),
                ("breadcrumbs-ties", breadcrumbs_ties, "Model Breadcrumbs with TIES",
                 "merge by sign (as TIES)"),
            )
        ),
        Merge(
            name="slerp", label="SLERP", function=slerp,
            summary="SLERP: spherical interpolation between two models, tensor by tensor",
            paper="Shoemake, SIGGRAPH 1985, as mergekit's slerp",
            formula="per tensor, sin((1-t)W)/sin(W) a + sin(tW)/sin(W) b with W the angle between "
            "the two, linear when they are nearly parallel; t = 0 is A, t = 1 is B", inputs="two",
            params=(Param("t", None, "where between A and B, in [0, 1]", mergekit="t",
                          bounds=(0, 1)),),
            mergekit={"slerp": {}},
        ),
        Merge(
            name="model-stock", label="Model Stock", function=model_stock_merge,
            summary="Model Stock: per-layer interpolation toward the base from the "
            "fine-tunes' angle",
            paper="Jang et al., Model Stock, ECCV 2024",
            formula="per tensor, t = k cos(phi) / ((k - 1) cos(phi) + 1) and theta = t * "
            "mean(fine-tunes) + (1 - t) * base; no held-out data needed", inputs="models+base",
            params=(
                Param("cosines", "clamp", "clamp: a negative mean cosine is clamped to 0 "
                      "(the tensor keeps the base); mergekit: kept, t extrapolates below 0, "
                      "as mergekit's model_stock", kind=("clamp", "mergekit")),
                Param("filter_wise", False, "one ratio per row (with --cosines mergekit)",
                      kind=bool, mergekit="filter_wise"),
            ),
            min_models=2, details=True, casts=True, precision=True,
            mergekit={"model_stock": {"cosines": "mergekit"}},
        ),
        Merge(
            name="nearswap", label="NearSwap", function=nearswap,
            summary="NearSwap: take B's entries where they are within t of A's, move toward B by "
            "t/|A - B| elsewhere",
            paper="alchemonaut, QuartetAnemoi-70B (2024), as mergekit's nearswap",
            formula="per entry, w = clamp(t / |a - b|, 0, 1) and w b + (1 - w) a; A is the "
            "base", inputs="two",
            params=(Param("t", None, "the distance under which B's entry is taken",
                          mergekit="t", bounds=(0, None), open_low=True),),
            precision=True, mergekit={"nearswap": {}},
        ),
        Merge(
            name="arcee-fusion", label="Arcee Fusion", function=arcee_fusion,
            summary="Arcee Fusion: take B's entries whose change from A matters most (by "
            "size times the change of softmax), keep A's elsewhere",
            paper="Arcee AI, as mergekit's arcee_fusion",
            formula="per tensor, s = |b - a| KL(softmax(b) || softmax(a)); b where s >= "
            "median(s) + 1.5 IQR(s), else a; A is the base", inputs="two",
            precision=True, mergekit={"arcee_fusion": {}},
        ),
        Merge(
            name="ram", label="RAM", function=ram,
            summary="RAM: per entry, the one fine-tune that changed it, or the mean of those "
            "that did",
            paper="Reinforced Agent Merging, arXiv:2601.13572, as mergekit's ram",
            formula="tau_i = theta_i - theta0 counted where |tau_i| > epsilon; theta0 + the "
            "mean of the counted tau_i per entry (0 where none)", inputs="models+base",
            params=(EPSILON,), precision=True, mergekit={"ram": {}},
        ),
        Merge(
            name="ram-plus", label="RAM+", function=ram_plus,
            summary="RAM+: RAM with each fine-tune's unique entries scaled up by how much of "
            "its change it shares",
            paper="Reinforced Agent Merging, arXiv:2601.13572, as mergekit's ramplus_tl",
            formula="as RAM, with model i's unique entries times 1 + r min(max(rho_i, 0), "
            "alpha), rho_i = its shared / unique counted entries (per tensor)",
            inputs="models+base",
            params=(
                Param("r", 0.1, "the scale's slope", mergekit="r", bounds=(0, None)),
                Param("alpha", 0.2, "the cap of the shared-to-unique ratio", mergekit="alpha",
                      bounds=(0, None)),
                EPSILON,
            ),
            precision=True, mergekit={"ramplus_tl": {}},
        ),
        Merge(
            name="sce", label="SCE", function=sce,
            summary="SCE: select the entries the fine-tunes disagree on most, weight task "
            "vectors by their energy, erase the minority sign, merge",
            paper="Wan et al., FuseChat: Knowledge Fusion of Chat Models, 2024",
            formula="keep the --select-topk fraction of entries of largest variance across "
            "task vectors, weight tau_i by mean(tau_i^2) (normalized), average the entries "
            "agreeing with the sign of sum_i tau_i, add to theta0", inputs="models+base",
            params=(Param("select_topk", 1.0, "the fraction of entries kept, by variance "
                          "across the task vectors", mergekit="select_topk", bounds=(0, 1)),),
            precision=True, mergekit={"sce": {}},
        ),
        Merge(
            name="karcher", label="Karcher mean", function=karcher,
            summary="Karcher mean: the models' mean direction on the sphere (Riemannian "
            "gradient steps), scaled by their mean norm",
            paper="as mergekit's karcher (the weighted Karcher mean on the unit sphere)",
            formula="per tensor, m minimizing sum_i angle(m, x_i / |x_i|)^2 by --max-iter "
            "gradient steps (until under --tol), times mean_i |x_i|", inputs="models",
            params=(
                Param("max_iter", 10, "the most gradient steps", kind=int,
                      mergekit="max_iter", bounds=(0, 10**6)),
                Param("tol", 1e-5, "the step length (and norm) under which to stop",
                      mergekit="tol", bounds=(0, None)),
            ),
            min_models=2, precision=True, mergekit={"karcher": {}},
        ),
        Merge(
            name="nuslerp", label="NuSLERP", function=nuslerp,
            summary="NuSLERP: SLERP of two models (or of their task vectors on --base) at the "
            "ratio of their weights",
            paper="as mergekit's nuslerp (SLERP by weights, per row or flattened)",
            formula="t = w_2 / (w_1 + w_2); per tensor (--flatten) or row (--row-wise), "
            "sin((1-t)W)/sin(W) a + sin(tW)/sin(W) b on the models or their task vectors",
            inputs="models",
            params=(
                Param("row_wise", False, "one SLERP per row (else per column), without "
                      "--flatten", kind=bool, mergekit="nuslerp_row_wise"),
                Param("flatten", True, "one SLERP of the whole tensor", kind=bool,
                      mergekit="nuslerp_flatten"),
            ),
            weights=True, min_models=2, max_models=2, precision=True, optional_base=True,
            mergekit={"nuslerp": {}},
        ),
        Merge(
            name="multislerp", label="Multi-SLERP", function=multislerp,
            summary="Multi-SLERP: the weighted mean of several models (or task vectors on "
            "--base) on the sphere, through the tangent space at their mean direction",
            paper="Goddard, Multi-SLERP, 2025, as mergekit's multislerp",
            formula="directions u_i = x_i/|x_i|, m their normalized weighted mean, v the "
            "weighted tangent sum_i w_i (u_i - <u_i,m> m), m cos|v| + v sin|v|/|v|, times "
            "sum_i w_i |x_i|", inputs="models",
            params=(
                Param("normalize_weights", True, "divide the weights by their sum",
                      kind=bool, mergekit="normalize_weights"),
                Param("eps", 1e-8, "added to norms", mergekit="eps", bounds=(0, None)),
            ),
            weights=True, min_models=1, precision=True, optional_base=True,
            mergekit={"multislerp": {}},
        ),
        Merge(
            name="passthrough", label="passthrough", function=passthrough,
            summary="passthrough: one model's tensors, optionally scaled (a frankenmerge's slices)",
            paper="mergekit's passthrough",
            formula="theta, or scale * theta", inputs="models",
            params=(Param("scale", 1.0, "the factor every floating tensor is multiplied by",
                          mergekit="scale", per_model=True),),
            precision=True, max_models=1, mergekit={"passthrough": {}},
        ),
        Merge(
            name="wiseft", label="WiSE-FT", function=wise_ft,
            summary="WiSE-FT: interpolate a fine-tuned model or soup toward the pretrained weights",
            paper="Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022",
            formula="(1 - alpha) * BASE + alpha * FINETUNED", inputs="base+one",
            # from 1 down: the first among equal scores is the larger alpha, as best_alpha
            params=(Param("alpha", None, "the fine-tuned model's share",
                          grid=tuple(reversed(DEFAULT_ALPHAS))),),
            casts=True,
        ),
    )
}  # fmt: skip


def applies_to_sweep(merge: Merge) -> bool:
    """Whether `compare` cooks ``merge`` for k fine-tunes on a base."""
    return merge.inputs == "models+base"


__all__ = ["DENSITIES", "LAMBDAS", "MERGES", "Merge", "Param", "applies_to_sweep"]


INPUT_WORDS = {
    "models": "INGREDIENT...",
    "models+base": "FT... --base BASE",
    "two": "A B",
    "base+one": "BASE FINETUNED",
}


def markdown_table() -> str:
    """The registry as the Markdown table of docs/commands.md (a test keeps them equal;
    ``python -m modelsoup.merges.registry`` prints it)."""
    rows = [
        "| command | inputs | parameters (default; grid searched with an evaluator) | "
        "mergekit method |",
        "|---|---|---|---|",
    ]
    for m in MERGES.values():
        params = []
        if m.weights:
            params.append("`--weights`")
        for p in m.params:
            text = f"`{p.option}`"
            if p.default is not None and not isinstance(p.default, bool):
                text += f" {p.default:g}" if isinstance(p.default, float) else f" {p.default}"
            elif isinstance(p.default, bool):
                text += " on" if p.default else " off"
            if p.grid:
                text += f" (grid {' '.join(f'{v:g}' for v in p.grid)})"
            params.append(text)
        mk = ", ".join(f"`{k}`" for k in m.mergekit) or "none"
        rows.append(
            f"| `modelsoup {m.name}` | `{INPUT_WORDS[m.inputs]}` | "
            f"{', '.join(params) or 'none'} | {mk} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
