"""Control charts over lots: Shewhart with the Western Electric rules, EWMA and CUSUM.

The limits come from the REFERENCE (validation good images), not from the lots themselves:
a few-shot project has no long in-control history to estimate them from, and limits fitted
on the very lots being judged would absorb a drift that is already there.

* median and p95 of a lot: their spread for a lot of ``n`` good parts is estimated by the
  smoothed bootstrap (``bootstrap_limits``): many lots of ``n`` scores drawn with replacement
  from the reference good scores, each draw jittered by a Gaussian of Silverman's bandwidth
  (1.06 sd n^-1/5), the statistic taken on each; center = their mean, sigma = their standard
  deviation. No normality is assumed and the lot size enters the way it should. The jitter
  matters for few shots: from 5 reference scores a plain bootstrap can never draw a value
  above the largest, so the p95 of a lot would look almost constant and any new lot would
  break its limits.
* reject rate: binomial. The reference's rejection probability at the threshold is
  ``(k + 0.5) / (n + 1)`` for ``k`` of ``n`` reference good scores at or above the threshold
  (a Jeffreys-style correction: 0 of 12 does not mean "never", and a zero sigma would make
  every reject an alarm); sigma = sqrt(p (1 - p) / lot size).

Rules (Western Electric, as in NIST/SEMATECH 6.3.2): 1) one point beyond 3 sigma; 2) two of
three consecutive points beyond 2 sigma on the same side; 3) four of five beyond 1 sigma on
the same side; 4) eight in a row on the same side of the center. A rule is reported at the
point that completes it. EWMA: lambda = 0.2, L = 3 with the exact time-varying limits;
CUSUM: tabular, k = 0.5 sigma, h = 5 sigma (Montgomery's usual choices: both detect a shift
of about one sigma within a few lots while a stable process alarms rarely).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EWMA_LAMBDA = 0.2
EWMA_L = 3.0
CUSUM_K = 0.5
CUSUM_H = 5.0
BOOTSTRAP_DRAWS = 2000

RULE_WORDS = {
    1: "rule 1: beyond 3σ",
    2: "rule 2: 2 of 3 beyond 2σ",
    3: "rule 3: 4 of 5 beyond 1σ",
    4: "rule 4: 8 in a row on one side",
}


@dataclass(frozen=True)
class Limits:
    """Center line and one sigma of a lot statistic, as estimated from the reference."""

    center: float
    sigma: float

    def line(self, k: float) -> float:
        return self.center + k * self.sigma


def _safe_sigma(sigma: float, center: float) -> float:
    """A zero sigma (a constant reference) would make any difference infinite z: floor it."""
    return max(float(sigma), 1e-9 * max(1.0, abs(center)))


def p95(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.percentile(values, 95, axis=axis)


def bootstrap_limits(reference: Sequence[float], lot_size: int,
                     statistic: Callable[..., np.ndarray] = np.median,
                     draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> Limits:
    """Center and sigma of ``statistic`` over lots of ``lot_size`` reference values
    (smoothed bootstrap, see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size == 0 or lot_size < 1:
        raise ValueError("bootstrap limits need reference values and a lot size of at least 1")
    rng = np.random.default_rng(seed)
    samples = ref[rng.integers(0, ref.size, size=(draws, int(lot_size)))]
    if ref.size > 1:
        bandwidth = 1.06 * float(ref.std(ddof=1)) * ref.size ** (-0.2)
        samples = samples + rng.normal(0.0, bandwidth, samples.shape)
    values = np.asarray(statistic(samples, axis=1), dtype=np.float64)
    center = float(values.mean())
    return Limits(center, _safe_sigma(float(values.std(ddof=1)), center))


def reject_rate_limits(reference: Sequence[float], threshold: float, lot_size: int) -> Limits:
    """Binomial limits of a lot's reject rate at ``threshold`` (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size == 0 or lot_size < 1:
        raise ValueError("reject-rate limits need reference values and a lot size of at least 1")
    k = int(np.sum(ref >= threshold))
    p = (k + 0.5) / (ref.size + 1)
    return Limits(p, _safe_sigma(float(np.sqrt(p * (1 - p) / lot_size)), p))


def western_electric(values: Sequence[float], limits: Limits,
                     sides: tuple[str, ...] = ("upper", "lower")) -> list[list[str]]:
    """Per point, the Western Electric rules it completes (``RULE_WORDS``), on ``sides``.

    ``sides=("upper",)`` judges only upward signals (a reject rate that falls is good news,
    and with a near-zero center eight lots without rejects would otherwise be "rule 4").
    """
    z = (np.asarray(values, dtype=np.float64) - limits.center) / limits.sigma
    hits: list[list[str]] = [[] for _ in range(z.size)]
    signs = [s for s, name in ((1.0, "upper"), (-1.0, "lower")) if name in sides]
    for i in range(z.size):
        found: set[int] = set()
        for sign in signs:
            zz = sign * z
            if zz[i] > 3:
                found.add(1)
            if zz[i] > 2 and np.sum(zz[max(0, i - 2):i + 1] > 2) >= 2:
                found.add(2)
            if zz[i] > 1 and np.sum(zz[max(0, i - 4):i + 1] > 1) >= 4:
                found.add(3)
            if i >= 7 and np.all(zz[i - 7:i + 1] > 0):
                found.add(4)
        hits[i] = [RULE_WORDS[r] for r in sorted(found)]
    return hits


def ewma(values: Sequence[float], limits: Limits, lam: float = EWMA_LAMBDA,
         width: float = EWMA_L) -> tuple[list[float], list[float], list[float]]:
    """(EWMA, upper limits, lower limits) per point; z_0 = center, exact limits.

    Limit i = center +/- L sigma sqrt(lam / (2 - lam) (1 - (1 - lam)^(2i))): narrow at the
    start, where the EWMA still holds little more than one point, widening to the
    asymptotic L sigma sqrt(lam / (2 - lam)).
    """
    z, upper, lower = [], [], []
    prev = limits.center
    for i, x in enumerate(np.asarray(values, dtype=np.float64), start=1):
        prev = lam * float(x) + (1 - lam) * prev
        half = width * limits.sigma * np.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)))
        z.append(prev)
        upper.append(limits.center + float(half))
        lower.append(limits.center - float(half))
    return z, upper, lower


def cusum(values: Sequence[float], limits: Limits, k: float = CUSUM_K,
          h: float = CUSUM_H) -> tuple[list[float], list[float], float]:
    """Tabular CUSUM: (upper sums, lower sums, decision interval h sigma), in value units.

    Both sums are >= 0: C+ accumulates rises above center + k sigma, C- falls below
    center - k sigma; either above h sigma signals a sustained shift.
    """
    allowance = k * limits.sigma
    pos, neg = [], []
    cp = cn = 0.0
    for x in np.asarray(values, dtype=np.float64):
        cp = max(0.0, float(x) - (limits.center + allowance) + cp)
        cn = max(0.0, (limits.center - allowance) - float(x) + cn)
        pos.append(cp)
        neg.append(cn)
    return pos, neg, h * limits.sigma
