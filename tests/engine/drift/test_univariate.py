"""KS, PSI and Wasserstein against scipy and hand values; the verdict on shifted and identical
distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine.drift import univariate as uv


def test_ks_and_wasserstein_are_scipys() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 50), rng.normal(0.3, 1, 40)
    d, p = uv.ks(a, b)
    ref = stats.ks_2samp(a, b)
    assert (d, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert uv.wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b))


@pytest.mark.parametrize(("n1", "n2", "shift", "ties"), [
    (6, 200, 0.0, False), (6, 200, 2.0, False), (48, 200, 0.5, True), (3, 3, 0.0, False),
    (200, 7, -1.0, True), (120, 10_050, 0.1, False),  # above 10 000: the asymptotic branch
])
def test_ks_matches_scipy_exact_and_asymptotic(n1: int, n2: int, shift: float,
                                               ties: bool) -> None:
    rng = np.random.default_rng(n1 * 1000 + n2)
    a, b = rng.normal(0, 1, n1), rng.normal(shift, 1, n2)
    if ties:  # repeated values, as rounded scores give
        a, b = np.round(a, 1), np.round(b, 1)
    ref = stats.ks_2samp(a, b)
    d, p = uv.ks(a, b)
    assert d == pytest.approx(float(ref.statistic), abs=1e-12)
    assert p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-300)


def test_wasserstein_hand_value() -> None:
    # every point moved by 2: the earth mover's distance is exactly 2
    assert uv.wasserstein([0, 1, 2, 3], [2, 3, 4, 5]) == pytest.approx(2.0)


def test_psi_hand_value() -> None:
    # 2 bins at the reference median 1.5: reference 50/50; current 3 of 4 in the upper bin
    reference, current = [0, 1, 2, 3], [0, 2, 3, 3]
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert uv.psi(reference, current, bins=2) == pytest.approx(expected)


def test_psi_empty_bin_uses_epsilon() -> None:
    reference, current = [0, 1, 2, 3], [2, 3, 3, 2]  # nothing in the lower bin
    eps = uv.PSI_EPS
    expected = (eps - 0.5) * math.log(eps / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert uv.psi(reference, current, bins=2, eps=eps) == pytest.approx(expected)


def test_psi_identical_is_zero() -> None:
    values = np.random.default_rng(1).normal(size=200)
    assert uv.psi(values, values) == pytest.approx(0.0, abs=1e-12)


def test_shifted_distribution_is_drift_identical_is_not() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(1.0, 0.1, 60)
    same = rng.normal(1.0, 0.1, 40)
    shifted = rng.normal(1.3, 0.1, 40)
    stable = uv.compare(reference, same)
    moved = uv.compare(reference, shifted)
    assert not stable.drift and stable.method == "ks" and stable.ks_p > 0.05
    assert moved.drift and moved.ks_p < 1e-6 and moved.shift > 0.2
    assert moved.psi_level == "significant" and stable.psi < moved.psi
    assert moved.relative_change == pytest.approx(np.mean(shifted) / np.mean(reference) - 1)


def test_large_reference_switches_to_normed_wasserstein() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, 5000)
    # a tiny shift KS would flag on this many rows, but it is far below 0.1 sigma
    tiny = uv.compare(reference, rng.normal(0.03, 1, 5000))
    big = uv.compare(reference, rng.normal(0.5, 1, 5000))
    assert tiny.method == big.method == "wasserstein_normed"
    assert not tiny.drift and big.drift and big.wasserstein_normed > 0.1


def test_compare_needs_two_values_per_side() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        uv.compare([1.0, 2.0], [1.0])


def test_prepared_reference_gives_the_same_numbers() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 40), [np.nan, np.inf]])  # non-finite dropped
    current = rng.normal(0.4, 1.2, 60)
    plain, prepared = uv.compare(values, current), uv.compare(uv.reference(values), current)
    assert plain == prepared
    assert plain.psi == pytest.approx(uv.psi(values, current))
    assert plain.n_reference == 40
