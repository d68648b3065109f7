"""Paired comparisons: the difference of two models on the same examples and its noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from modelsoup.analysis.paired import (
    describe,
    mcnemar_exact,
    paired,
    paired_mean,
    paired_tokens,
)
from modelsoup.errors import SoupError


def test_paired_difference_and_standard_error_by_hand():
    a = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0.0])
    b = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0.0])
    p = paired(a, b)
    d = (a - b).numpy()
    assert p.diff == pytest.approx(d.mean())
    assert p.se == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)))
    assert p.n == 8
    # discordant: a right b wrong on 3, a wrong b right on 1
    assert p.p == pytest.approx(binomtest(1, 4, 0.5).pvalue)
    assert p.within_noise  # +25 pp on 8 examples


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 17), (40, 60), (250, 300), (7, 7)])
def test_mcnemar_exact_matches_the_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)


def test_a_large_difference_is_beyond_noise_and_identical_outcomes_say_so():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2000, generator=g) < 0.9).double()
    b = (torch.rand(2000, generator=g) < 0.7).double()
    p = paired(a, b)
    assert not p.within_noise and p.p is not None and p.p < 1e-6
    same = paired(a, a)
    assert same.diff == 0 and same.se == 0 and same.within_noise
    assert "no example differs" in describe(same)
    assert "SE" in describe(p) and "within noise" not in describe(p)


def test_fractional_outcomes_have_a_standard_error_but_no_mcnemar():
    a = torch.tensor([1 / 3, 2 / 3, 1.0, 0.0])
    b = torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = paired(a, b)
    assert p.p is None and p.se == pytest.approx(np.std((a - b).numpy(), ddof=1) / 2)


def test_mean_over_splits_keeps_the_correlation_of_aligned_splits():
    g = torch.Generator().manual_seed(1)
    n = 300
    base = torch.rand(n, generator=g)
    # two corruptions of the same examples: strongly correlated outcomes
    a = {s: (base + 0.05 * torch.rand(n, generator=g) > 0.4).double() for s in ("c1", "c2")}
    b = {s: (base + 0.05 * torch.rand(n, generator=g) > 0.5).double() for s in ("c1", "c2")}
    a["other"] = (torch.rand(200, generator=g) > 0.3).double()
    b["other"] = (torch.rand(200, generator=g) > 0.3).double()
    splits = ["other", "c1", "c2"]
    got = paired_mean(a, b, splits, aligned=[["c1", "c2"]])
    d = {s: (a[s] - b[s]).numpy() for s in splits}
    joint = (d["c1"] + d["c2"]) / 3
    var = joint.var(ddof=1) / n + (d["other"] / 3).var(ddof=1) / 200
    assert got.diff == pytest.approx(np.mean([d[s].mean() for s in splits]))
    assert got.se == pytest.approx(math.sqrt(var))
    independent = paired_mean(a, b, splits)
    var_ind = sum((d[s] / 3).var(ddof=1) / len(d[s]) for s in splits)
    assert independent.se == pytest.approx(math.sqrt(var_ind))
    assert got.se > independent.se  # positively correlated splits: more noise, not less
    assert paired_mean(a, b, ["c1"]).p is not None  # one split: McNemar too


def test_degenerate_input_is_the_projects_error():
    with pytest.raises(SoupError, match="no examples"):
        paired(torch.zeros(0), torch.zeros(0))
    with pytest.raises(SoupError, match="same examples"):
        paired(torch.zeros(3), torch.zeros(4))
    one = paired(torch.ones(1), torch.zeros(1))
    assert one.se is None and one.within_noise and "no standard error" in describe(one)
    with pytest.raises(SoupError, match="different sizes"):
        paired_mean(
            {"x": torch.ones(3), "y": torch.ones(4)},
            {"x": torch.zeros(3), "y": torch.zeros(4)},
            ["x", "y"],
            aligned=[["x", "y"]],
        )
    with pytest.raises(SoupError, match="no splits"):
        paired_mean({}, {}, [])


# --- language models: token-weighted means, examples as the unit -------------------------


def test_paired_tokens_with_equal_examples_is_the_paired_error_of_example_means():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=g), torch.rand(40, generator=g)
    example_of = torch.arange(10).repeat_interleave(4)
    p = paired_tokens(a, b, example_of)
    by_example = paired(a.view(10, 4).mean(1), b.view(10, 4).mean(1))
    assert p.diff == pytest.approx(by_example.diff)
    assert p.se == pytest.approx(by_example.se)
    assert p.n == 10 and p.p is None


def test_paired_tokens_error_matches_the_spread_of_resampled_held_out_sets():
    """Tokens of one example share an effect, so a token-level error is too small; the
    example-level error matches the spread of the difference over fresh held-out sets."""
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 30, (60,), generator=g)
    example_of = torch.repeat_interleave(torch.arange(60), sizes)
    diffs, ses, naive = [], [], []
    for _ in range(1500):
        shared = torch.randn(60, generator=g)[example_of]  # an effect per example
        d = shared + 0.3 * torch.randn(len(example_of), generator=g)
        p = paired_tokens(d, torch.zeros_like(d), example_of)
        diffs.append(p.diff)
        ses.append(p.se)
        naive.append(float(d.std()) / math.sqrt(len(d)))
    spread = float(np.std(diffs))
    assert float(np.mean(ses)) == pytest.approx(spread, rel=0.12)
    assert float(np.mean(naive)) < 0.5 * spread  # what counting tokens would claim


def test_paired_tokens_degenerate_input():
    one = paired_tokens(torch.ones(5), torch.zeros(5), torch.zeros(5, dtype=torch.long))
    assert one.se is None and one.n == 1 and one.diff == 1
    with pytest.raises(SoupError, match="example indices"):
        paired_tokens(torch.ones(3), torch.zeros(3), torch.zeros(2, dtype=torch.long))
