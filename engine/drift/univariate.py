"""Two-sample drift statistics on one number per image (anomaly score, brightness, ...).

Why these three, and why scipy for two of them:

* **KS** (the numbers of ``scipy.stats.ks_2samp``, see :func:`ks`): distribution-free and
  exact for small samples, which is what a few-shot reference is (a handful to a few
  hundred validation images). Evidently's default for a numerical column with at most
  1,000 reference rows; drift when p < 0.05.
* **Wasserstein** (``scipy.stats.wasserstein_distance``): how far the scores moved, in score
  units; normed by the reference's standard deviation it is Evidently's default above 1,000
  reference rows (drift when the normed distance is >= 0.1), where KS flags differences too
  small to matter.
* **PSI**: the population stability index the quality world already reads, on 10 bins cut at
  the reference's quantiles (each bin holds ~10 % of the reference), empty bins filled with
  ``PSI_EPS`` so the log stays finite. Conventions: < 0.1 no real change, 0.1-0.25 a moderate
  change worth watching, > 0.25 a significant change. It has no p-value and is unstable on a
  tiny reference, so it only ever raises a *watch*, never a drift verdict on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

try:  # scipy's exact two-sample KS distribution (what ks_2samp itself calls)
    from scipy.stats._stats_py import _attempt_exact_2kssamp as _exact_2samp
except ImportError:  # pragma: no cover - a scipy that moved it: ks() calls ks_2samp instead
    _exact_2samp = None

#: Evidently's defaults: KS at p < 0.05 up to this many reference rows, Wasserstein above.
KS_MAX_REFERENCE = 1000
KS_ALPHA = 0.05
WASSERSTEIN_NORMED_LIMIT = 0.1
PSI_BINS = 10
PSI_EPS = 1e-4
PSI_WATCH = 0.1
PSI_DRIFT = 0.25
#: Below this many values on either side PSI's bins hold one or two values each and a single
#: image moves it by whole units: it is still reported, but raises nothing.
PSI_MIN_N = 20


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


#: scipy's ``ks_2samp`` uses the exact distribution up to this many values on the larger side.
KS_EXACT_MAX_N = 10_000


def ks(reference: Sequence[float], current: Sequence[float]) -> tuple[float, float]:
    """(KS statistic D, two-sided p-value): the same numbers as ``scipy.stats.ks_2samp``
    (method ``auto``), about 50x faster per call.

    Why not call ``ks_2samp``: the Drift page runs 4 tests per lot, 400 for 100 lots, and
    ``ks_2samp`` spends ~1 ms per call in its argument-checking wrapper, not in the statistic
    (the page's budget is 1 s in all). D is computed here on sorted arrays with numpy, as scipy
    does; the p-value comes from scipy's exact two-sample routine (private, so a scipy without
    it falls back to ``ks_2samp`` itself) or, above :data:`KS_EXACT_MAX_N`, from Smirnov's
    asymptotic distribution ``kstwo`` with n = round(n1 n2 / (n1 + n2)), as scipy does.
    """
    a, b = np.sort(_clean(reference)), np.sort(_clean(current))
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        raise ValueError("a KS test needs values on both sides")
    both = np.concatenate([a, b])
    diff = (np.searchsorted(a, both, side="right") / n1
            - np.searchsorted(b, both, side="right") / n2)
    d = float(max(float(diff.max()), float(np.clip(-diff.min(), 0, 1))))
    if max(n1, n2) <= KS_EXACT_MAX_N:
        if _exact_2samp is None:
            result = stats.ks_2samp(a, b)
            return float(result.statistic), float(result.pvalue)
        ok, d_exact, prob = _exact_2samp(n1, n2, math.gcd(n1, n2), d, "two-sided")
        if ok:
            return float(d_exact), float(np.clip(prob, 0.0, 1.0))
    m, n = sorted((float(n1), float(n2)), reverse=True)
    prob = stats.kstwo.sf(d, np.round(m * n / (m + n)))
    return d, float(np.clip(prob, 0.0, 1.0))


def wasserstein(reference: Sequence[float], current: Sequence[float]) -> float:
    """Earth mover's distance between the two empirical distributions, in value units."""
    return float(stats.wasserstein_distance(_clean(reference), _clean(current)))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = PSI_BINS,
        eps: float = PSI_EPS) -> float:
    """Population stability index on ``bins`` reference-quantile bins.

    Tied quantiles (a reference with repeated values) merge bins rather than leave empty
    ones; values outside the reference's range fall into the first or last bin.
    """
    ref, cur = _clean(reference), _clean(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs values on both sides")
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    n_bins = inner.size + 1
    ref_p = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=n_bins) / ref.size
    cur_p = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=n_bins) / cur.size
    ref_p = np.where(ref_p == 0, eps, ref_p)
    cur_p = np.where(cur_p == 0, eps, cur_p)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


@dataclass(frozen=True)
class UnivariateDrift:
    """All three statistics of one signal and the verdict of the test that decides.

    ``method`` says which test decided (``"ks"`` or ``"wasserstein_normed"``); ``shift`` is
    the median of the current values minus the reference median (its sign says up or down);
    ``relative_change`` the change of the mean relative to the reference mean (None at 0).
    """

    ks: float
    ks_p: float
    psi: float
    wasserstein: float
    wasserstein_normed: float | None
    method: str
    drift: bool
    shift: float
    relative_change: float | None
    n_reference: int
    n_current: int

    @property
    def psi_reliable(self) -> bool:
        return min(self.n_reference, self.n_current) >= PSI_MIN_N

    @property
    def psi_level(self) -> str:
        """"none" / "moderate" / "significant" by the usual 0.1 / 0.25 conventions."""
        if self.psi >= PSI_DRIFT:
            return "significant"
        return "moderate" if self.psi >= PSI_WATCH else "none"

    def as_dict(self) -> dict[str, float | None]:
        """The numbers a page or a JSON report shows (no NaN: JSON has none)."""
        return {"ks": self.ks, "ks_p": self.ks_p, "psi": self.psi,
                "wasserstein": self.wasserstein, "wasserstein_normed": self.wasserstein_normed,
                "shift": self.shift, "relative_change": self.relative_change}


@dataclass(frozen=True)
class Reference:
    """A reference's values with what every comparison needs of them, computed once.

    The Drift page compares 100 lots with the same few references: recomputing the
    reference's sort, mean, spread, median and PSI bin edges per lot was a third of
    :func:`compare`'s time. Build it with :func:`reference`.
    """

    values: np.ndarray  # finite, sorted
    mean: float
    std: float
    median: float
    psi_edges: np.ndarray


def reference(values: Sequence[float] | np.ndarray) -> Reference:
    """:class:`Reference` of ``values`` (non-finite values dropped)."""
    ref = np.sort(_clean(values))
    if ref.size == 0:
        return Reference(ref, float("nan"), float("nan"), float("nan"), np.zeros(0))
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1))[1:-1])
    return Reference(ref, float(np.mean(ref)), float(np.std(ref)), float(np.median(ref)),
                     edges)


def _psi_prepared(ref: Reference, cur: np.ndarray, eps: float = PSI_EPS) -> float:
    """:func:`psi` with the reference's bin edges already cut (same numbers)."""
    n_bins = ref.psi_edges.size + 1
    ref_p = np.bincount(np.searchsorted(ref.psi_edges, ref.values, side="right"),
                        minlength=n_bins) / ref.values.size
    cur_p = np.bincount(np.searchsorted(ref.psi_edges, cur, side="right"),
                        minlength=n_bins) / cur.size
    ref_p = np.where(ref_p == 0, eps, ref_p)
    cur_p = np.where(cur_p == 0, eps, cur_p)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def compare(reference_values: Sequence[float] | Reference,
            current: Sequence[float]) -> UnivariateDrift:
    """Compare ``current`` with a reference the way Evidently judges a numerical column.

    ``reference_values``: the values, or a :class:`Reference` made once for many lots.
    Needs at least two finite values on each side (a ValueError otherwise): with one value a
    distribution test says nothing.
    """
    ref = (reference_values if isinstance(reference_values, Reference)
           else reference(reference_values))
    cur = _clean(current)
    if ref.values.size < 2 or cur.size < 2:
        raise ValueError(f"a drift test needs at least 2 values per side "
                         f"(reference {ref.values.size}, current {cur.size})")
    d, p = ks(ref.values, cur)
    w = wasserstein(ref.values, cur)
    w_normed = w / ref.std if ref.std > 0 else None
    if ref.values.size <= KS_MAX_REFERENCE or w_normed is None:
        method, drift = "ks", p < KS_ALPHA
    else:
        method, drift = "wasserstein_normed", w_normed >= WASSERSTEIN_NORMED_LIMIT
    rel = (float(np.mean(cur)) - ref.mean) / abs(ref.mean) if ref.mean != 0 else None
    return UnivariateDrift(
        ks=d, ks_p=p, psi=_psi_prepared(ref, cur), wasserstein=w, wasserstein_normed=w_normed,
        method=method, drift=bool(drift), shift=float(np.median(cur) - ref.median),
        relative_change=rel, n_reference=int(ref.values.size), n_current=int(cur.size),
    )


def finite_or_none(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
