"""Western Electric rules on constructed series; EWMA and CUSUM limits checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.drift import charts
from engine.drift.charts import RULE_WORDS, Limits

L = Limits(center=10.0, sigma=1.0)


def rules(values: list[float], **kw: object) -> list[list[int]]:
    words = {w: r for r, w in RULE_WORDS.items()}
    return [[words[w] for w in hit] for hit in charts.western_electric(values, L, **kw)]


def test_rule_1_beyond_three_sigma_both_sides() -> None:
    assert rules([10, 13.5, 10, 6.0]) == [[], [1], [], [1]]


def test_rule_2_two_of_three_beyond_two_sigma_same_side() -> None:
    assert rules([10, 12.5, 10, 12.5]) == [[], [], [], [2]]
    assert rules([10, 12.5, 10, 7.5]) == [[], [], [], []]  # opposite sides: no rule


def test_rule_3_four_of_five_beyond_one_sigma() -> None:
    assert rules([11.5, 11.5, 10, 11.5, 11.5]) == [[], [], [], [], [3]]
    assert rules([11.5, 11.5, 10, 10, 11.5]) == [[]] * 5


def test_rule_4_eight_in_a_row_on_one_side() -> None:
    series = [10.5] * 8
    assert rules(series)[-1] == [4] and all(not r for r in rules(series)[:-1])
    assert rules([10.5] * 7 + [9.5]) == [[]] * 8


def test_upper_side_only() -> None:
    assert rules([6.0, 13.5], sides=("upper",)) == [[], [1]]


def test_stable_noise_breaks_rule_1_rarely() -> None:
    values = np.random.default_rng(0).normal(10, 1, 1000)
    hits = sum("rule 1: beyond 3σ" in h for h in charts.western_electric(values, L))
    assert hits < 10  # 0.27 % expected


def test_ewma_values_and_exact_limits() -> None:
    z, upper, lower = charts.ewma([11.0, 11.0, 10.0], L, lam=0.2, width=3.0)
    assert z == pytest.approx([10.2, 10.36, 10.288])
    first = 3 * math.sqrt(0.2 / 1.8 * (1 - 0.8**2))  # = 3 * 0.2 = 0.6
    assert first == pytest.approx(0.6)
    assert upper[0] == pytest.approx(10.6) and lower[0] == pytest.approx(9.4)
    asymptote = 3 * math.sqrt(0.2 / 1.8)
    z2, upper2, _ = charts.ewma([10.0] * 200, L)
    assert upper2[-1] == pytest.approx(10 + asymptote) and z2[-1] == pytest.approx(10.0)


def test_cusum_hand_values() -> None:
    pos, neg, h = charts.cusum([11.0, 12.0, 9.0, 7.0], L, k=0.5, h=5.0)
    assert h == 5.0
    assert pos == pytest.approx([0.5, 2.0, 0.5, 0.0])
    assert neg == pytest.approx([0.0, 0.0, 0.5, 3.0])


def test_bootstrap_limits_of_the_median() -> None:
    reference = np.random.default_rng(1).normal(5.0, 1.0, 400)
    limits = charts.bootstrap_limits(reference, lot_size=25)
    # the median of n normal values has sd ~ 1.2533 / sqrt(n)
    assert limits.center == pytest.approx(5.0, abs=0.15)
    assert limits.sigma == pytest.approx(1.2533 / 5, rel=0.2)
    assert charts.bootstrap_limits(reference, 25) == limits  # seeded


def test_reject_rate_limits_binomial() -> None:
    limits = charts.reject_rate_limits([1, 2, 3, 4, 5, 6, 7, 8, 9], threshold=8.5, lot_size=20)
    p = 1.5 / 10  # one of nine at or above the threshold, Jeffreys-style
    assert limits.center == pytest.approx(p)
    assert limits.sigma == pytest.approx(math.sqrt(p * (1 - p) / 20))
