"""Seed statistics for comparison tables: means, spreads, 95% intervals, margins over the control, and orders
stated only where the intervals separate.

For n seeds with values v_1..v_n:

    mean = (1/n) sum v_i,   std = sqrt(sum (v_i - mean)^2 / (n - 1)),
    95% interval = mean +- t_{0.975, n-1} std / sqrt(n)          (Student's t; n = 1: no interval)

The margin over the control (readout_only on the same data and model) is paired by seed: the per-seed
differences a_rule(s) - a_control(s) over the seeds both have, with the same t interval. Without a common seed
it is the difference of the means and its interval Welch's (unequal variances, Welch-Satterthwaite degrees of
freedom).

`rank_groups` orders rows by mean and gives each the rank 1 + (the number of rows whose interval lies entirely
above its own): rows whose intervals overlap share a rank, i.e. are tied; a row with one seed has no interval and
ranks as tied with every row whose interval contains its mean.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """mean, std, n and the 95% interval [lo, hi] of a list of seed values (lo = hi = mean for n = 1)."""

    mean: float
    std: float
    n: int
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def t_critical(dof: float) -> float:
    """Two-sided 95% critical value of Student's t with `dof` degrees of freedom."""
    from scipy import stats as _st  # imported when first needed: importing compare stays light

    return float(_st.t.ppf(0.5 + CONFIDENCE / 2, dof))


def summarise(values: list[float]) -> Summary:
    """Mean, sample std, n and the t interval of `values` (NaN for none; no interval for one value)."""
    vals = [float(v) for v in values if v == v]
    n = len(vals)
    if n == 0:
        nan = float("nan")
        return Summary(nan, nan, 0, nan, nan)
    mean = statistics.fmean(vals)
    if n == 1:
        return Summary(mean, 0.0, 1, mean, mean)
    std = statistics.stdev(vals)
    h = t_critical(n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - h, mean + h)


def margin(rule: dict[int, float], control: dict[int, float]) -> Summary:
    """rule - control, from per-seed values {seed: value}: paired over common seeds, else Welch."""
    common = sorted(set(rule) & set(control))
    if common:
        return summarise([rule[s] - control[s] for s in common])
    a, b = summarise(list(rule.values())), summarise(list(control.values()))
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Summary(diff, float("nan"), min(a.n, b.n), diff, diff)
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    dof = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1)) if va + vb > 0 else a.n + b.n - 2
    h = t_critical(dof) * math.sqrt(va + vb)
    return Summary(diff, math.sqrt(va + vb), min(a.n, b.n), diff - h, diff + h)


def rank_groups(summaries: list[Summary]) -> list[int]:
    """Rank of each summary: 1 + the number of others whose whole interval lies above its own (ties share)."""
    return [1 + sum(o.lo > s.hi for o in summaries) for s in summaries]


__all__ = ["CONFIDENCE", "Summary", "margin", "rank_groups", "summarise", "t_critical"]
