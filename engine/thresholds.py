"""Turning raw anomaly scores into verdicts.

Scores are raw model outputs, higher meaning more anomalous. Every strategy here returns a
threshold with one convention shared by the whole project: **a score is a defect when
``score >= threshold``** (scikit-learn's convention, so the F1-optimal threshold is one of the
observed scores).

A single threshold forces a yes/no on borderline parts; the :class:`ReviewBand` instead sends the
uncertain middle to a human, which is how few-shot inspection is used in practice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr
from sklearn.metrics import precision_recall_curve

GOOD, REVIEW, DEFECT = "good", "review", "defect"


class ThresholdResult(NamedTuple):
    """A threshold and how it was obtained (``params`` is JSON-friendly, for the database)."""

    method: str
    value: float
    params: dict[str, Any]


# --------------------------------------------------------------------------- validation


def as_scores(values: ArrayLike, name: str = "scores", min_size: int = 1) -> np.ndarray:
    """1-D float64 copy of ``values``; ValueError if too short or not finite (NaN/inf)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < min_size:
        need = "is empty" if arr.size == 0 else f"has {arr.size} value(s), need {min_size}"
        raise ValueError(f"{name} {need}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite value(s)")
    return arr


def as_labels(
    labels: ArrayLike, n: int, need_both: bool = True, purpose: str = "this"
) -> np.ndarray:
    """1-D int array of 0 (good) / 1 (defect) of length ``n``; both classes unless told not to."""
    arr = np.asarray(labels).reshape(-1)
    if arr.size != n:
        raise ValueError(f"got {n} scores but {arr.size} labels")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (defect)")
    arr = arr.astype(np.int64)
    if need_both and np.unique(arr).size < 2:
        only = "defect" if arr.size and arr[0] == 1 else "good"
        raise ValueError(
            f"{purpose} needs both good (0) and defect (1) images; got only {only} images"
        )
    return arr


def _finite(value: float, name: str) -> float:
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


# --------------------------------------------------------------------------- strategies


def f1_optimal(scores: ArrayLike, labels: ArrayLike) -> ThresholdResult:
    """Threshold maximising F1 on labelled scores (the one anomalib's F1AdaptiveThreshold picks)."""
    s = as_scores(scores)
    y = as_labels(labels, s.size, purpose="the F1-optimal threshold")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last PR point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return ThresholdResult(
        "f1_optimal",
        float(thresholds[best]),
        {"f1": float(f1[best]), "precision": float(p[best]), "recall": float(r[best])},
    )


def mean_k_sigma(normal_scores: ArrayLike, k: float = 3.0) -> ThresholdResult:
    """``mean + k * std`` of good scores (sample std), for when no defect examples exist."""
    s = as_scores(normal_scores, "normal_scores", min_size=2)
    k = _finite(k, "k")
    mean, std = float(s.mean()), float(s.std(ddof=1))
    return ThresholdResult(
        "mean_k_sigma", mean + k * std, {"k": k, "mean": mean, "std": std, "n": int(s.size)}
    )


def percentile(normal_scores: ArrayLike, q: float = 99.0) -> ThresholdResult:
    """``q``-th percentile of good scores: accept about ``100 - q`` % false rejects."""
    s = as_scores(normal_scores, "normal_scores")
    q = _finite(q, "q")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    return ThresholdResult("percentile", float(np.percentile(s, q)), {"q": q, "n": int(s.size)})


def manual(value: float) -> ThresholdResult:
    """A threshold the user typed in."""
    return ThresholdResult("manual", _finite(value, "threshold"), {})


# --------------------------------------------------------------------------- sanity


def sane_range(good_scores: ArrayLike, all_scores: ArrayLike = ()) -> tuple[float, float]:
    """Where a threshold can be meant seriously, from a model's validation scores.

    The rule: from ``min(min(good) - spread_good, min(all) - spread_all / 20)`` to
    ``max(all) + spread_all``, where ``spread`` is the range (max - min) of that set of scores
    (half its magnitude, or 1, when all are equal) and ``all`` is every validation score, good
    and defect. The low end follows the good scores because a threshold far below every good
    part flags every part (0 or -1 on distance scores is a typo, not a choice), with a margin
    under the lowest score seen so a slider over the scores never leaves the range; the high
    end uses every score because a threshold above the defects is a lax but legitimate choice,
    while 1e308 is not. When every score is positive (distances), the threshold must be
    positive too.
    """
    good = as_scores(good_scores, "good_scores")
    every = np.concatenate([good, as_scores(all_scores, "scores", min_size=0)])

    def spread(values: np.ndarray) -> float:
        width = float(values.max() - values.min())
        return width if width > 0 else (0.5 * abs(float(values.max())) or 1.0)

    low = min(float(good.min()) - spread(good), float(every.min()) - spread(every) / 20)
    if float(every.min()) > 0:
        low = max(low, 0.0)
    return low, float(every.max()) + spread(every)


def check_sane(value: float, good_scores: ArrayLike, all_scores: ArrayLike = (),
               confirm_extreme: bool = False) -> float:
    """``value`` if finite and inside :func:`sane_range`; else ValueError saying the range.

    ``confirm_extreme=True`` lets a finite value outside the range through: a person said so
    explicitly. With no scores known (an old state) only finiteness is checked.
    """
    value = _finite(value, "threshold")
    good = np.asarray(good_scores, dtype=np.float64).reshape(-1)
    if confirm_extreme or good.size == 0:
        return value
    low, high = sane_range(good, all_scores)
    positive_only = low == 0.0 and value <= 0.0
    if low <= value <= high and not positive_only:
        return value
    every = np.concatenate([good, np.asarray(all_scores, dtype=np.float64).reshape(-1)])
    raise ValueError(
        f"threshold {value:g} is outside the sane range {low:.4g} to {high:.4g} for this model "
        f"(its validation scores run from {float(every.min()):.4g} to {float(every.max()):.4g})"
        "; a threshold there flags every part or none. To use it anyway, confirm it "
        "explicitly (CLI: --confirm)"
    )


# --------------------------------------------------------------------------- review band


@dataclass(frozen=True)
class ReviewBand:
    """Two thresholds: below ``low`` is surely good, at or above ``high`` surely defect.

    With ``low == high`` it is an ordinary single threshold (``score >= high`` is a defect).
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        _finite(self.low, "low")
        _finite(self.high, "high")
        if self.low > self.high:
            raise ValueError(f"review band low ({self.low}) must not exceed high ({self.high})")

    def classify(self, scores: ArrayLike) -> np.ndarray:
        """``"good"`` / ``"review"`` / ``"defect"`` per score (same shape as ``scores``)."""
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        out = np.full(s.shape, REVIEW, dtype=object)
        out[s < self.low] = GOOD
        out[s >= self.high] = DEFECT
        return out.astype(str)

    @classmethod
    def from_threshold(cls, threshold: float, margin: float) -> ReviewBand:
        """``threshold ± margin`` (absolute, in score units)."""
        threshold, margin = _finite(threshold, "threshold"), _finite(margin, "margin")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        return cls(threshold - margin, threshold + margin)

    @classmethod
    def from_scores(
        cls,
        normal_scores: ArrayLike,
        defect_scores: ArrayLike,
        normal_percentile: float = 100.0,
        defect_percentile: float = 0.0,
    ) -> ReviewBand:
        """Band from labelled validation scores.

        ``hi_normal`` is the highest good score (or its ``normal_percentile``), ``lo_defect`` the
        lowest defect score (or its ``defect_percentile``). When the classes overlap, nothing
        below ``lo_defect`` was ever a defect and nothing above ``hi_normal`` ever good, so the
        overlap is the review zone. When they are separated, the unseen gap between them is.
        Either way the band is ``[min, max]`` of the two.
        """
        normal = as_scores(normal_scores, "normal_scores")
        defect = as_scores(defect_scores, "defect_scores")
        hi_normal = float(np.percentile(normal, normal_percentile))
        lo_defect = float(np.percentile(defect, defect_percentile))
        return cls(min(hi_normal, lo_defect), max(hi_normal, lo_defect))


# --------------------------------------------------------------------------- display


def normalize(scores: ArrayLike, threshold: float, normal_scores: ArrayLike) -> np.ndarray:
    """Map raw scores to [0, 1] with the median good score at 0 and the threshold at 0.5.

    One linear map ``0.5 * (s - median) / (threshold - median)``, clipped to [0, 1]: monotonic,
    anchored on two meaningful points, and ``2 * threshold - median`` reaches 1. Anomalib's
    min-max normalisation is not used because it anchors on the extreme validation scores, so
    one outlier moves every displayed value; the median of good scores does not move.
    """
    threshold = _finite(threshold, "threshold")
    median = float(np.median(as_scores(normal_scores, "normal_scores")))
    if threshold <= median:
        raise ValueError(
            f"threshold ({threshold}) must be above the median normal score ({median})"
        )
    s = _float_array(scores)
    return np.clip(0.5 * (s - median) / (threshold - median), 0.0, 1.0)


def _float_array(values: ArrayLike) -> np.ndarray:
    """``values`` as floats, float32 kept as float32: a full-size anomaly map of a large image
    must not be copied to float64 just to be normalised (peak memory while scoring)."""
    arr = np.asarray(values)
    return arr if arr.dtype == np.float32 else arr.astype(np.float64)


def confidence(score: ArrayLike, threshold: float, normal_scores: ArrayLike) -> float | np.ndarray:
    """How sure the verdict at ``threshold`` is, in [0.5, 1].

    ``Phi(|score - threshold| / sigma)`` with ``sigma`` the sample std of good scores: the
    probability that noise of the size seen on good parts would not flip the verdict. 0.5 at the
    threshold, 0.84 one sigma away, 0.9987 three sigma away. Returns a float for a scalar score.
    """
    threshold = _finite(threshold, "threshold")
    sigma = float(as_scores(normal_scores, "normal_scores", min_size=2).std(ddof=1))
    sigma = max(sigma, 1e-12 * max(1.0, abs(threshold)))  # identical good scores: any gap is sure
    s = np.asarray(score, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("score contains NaN")
    conf = ndtr(np.abs(s - threshold) / sigma)
    return float(conf) if conf.ndim == 0 else conf


# --------------------------------------------------------------------------- margin


def f1_optimal_with_margin(scores: ArrayLike, labels: ArrayLike) -> ThresholdResult:
    """The F1-optimal threshold moved to the middle of its plateau.

    :func:`f1_optimal` returns an observed score (the lowest defect score when the classes
    separate), so the first new defect that scores a hair lower is missed. Every threshold in
    ``(next lower score, best]`` makes the same calls on these images (the same F1), so the
    middle of that interval is as good here and leaves a margin on both sides: midway between
    the highest good and the lowest defect score when they separate. The method stays
    ``f1_optimal`` (it still maximises F1); ``params["plateau"]`` records the interval.
    """
    best = f1_optimal(scores, labels)
    s = as_scores(scores)
    below = s[s < best.value]
    if below.size == 0:  # every image is called defect at the best threshold: no lower edge
        return best
    lower = float(below.max())
    middle = lower + (best.value - lower) / 2
    return ThresholdResult(best.method, middle,
                           {**best.params, "plateau": [lower, best.value], "placed": "middle"})
