"""Seed statistics: the t interval, the paired margin over the control, and orders only where intervals part."""
import math

import pytest

from bioplaus.aggregate import margin, rank_groups, summarise


def test_t_interval_by_hand():
    s = summarise([0.80, 0.82, 0.84])              # mean 0.82, std 0.02, t(0.975, 2) = 4.302653
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02) and s.n == 3
    assert s.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    one = summarise([0.9])
    assert one.n == 1 and one.lo == one.hi == 0.9 and one.std == 0.0


def test_margin_is_paired_by_seed():
    rule = {0: 0.86, 1: 0.87, 2: 0.85}
    control = {0: 0.80, 1: 0.81, 2: 0.79}            # every seed 0.06 better: no spread at all
    m = margin(rule, control)
    assert m.mean == pytest.approx(0.06) and m.half_width == pytest.approx(0.0, abs=1e-12)
    unpaired = margin({0: 0.86, 1: 0.87, 2: 0.85}, {5: 0.80, 6: 0.81, 7: 0.79})
    assert unpaired.mean == pytest.approx(0.06) and unpaired.half_width > 0.02      # Welch: wider


def test_ranks_only_where_intervals_separate():
    a, b, c = summarise([0.90, 0.91, 0.92]), summarise([0.905, 0.915, 0.925]), summarise([0.80, 0.81, 0.82])
    assert rank_groups([a, b, c]) == [1, 1, 3]     # a and b overlap: tied; c is below both
