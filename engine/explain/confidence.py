"""How far to trust a verdict, from the held-out good scores the threshold was chosen on.

* **conformal p-value** ``(1 + #{good >= s}) / (n + 1)``: if this part were good, how often a
  good part scores at least this high. Valid for any score distribution as long as held-out
  good parts and this part are exchangeable; it cannot go below ``1 / (n + 1)``, so with few
  held-out images even an extreme score is only "at most 1 in n + 1".
* **false-alarm rate** at the threshold: the share of held-out good parts scored at or above it.
* **kNN spread** at the image's most unusual patch: coefficient of variation (std / mean) of its
  k nearest bank distances. Small: the k closest normal patches are about equally far, the score
  does not hinge on one training patch; large: it rests on one or two of them, so more good
  images could move it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: kNN spread (std / mean) up to which neighbours "agree", and from which they clearly do not.
SPREAD_TIGHT = 0.05
SPREAD_WIDE = 0.2


def conformal_p_value(score: float, good_scores: Sequence[float]) -> float:
    """``(1 + #{good >= score}) / (n + 1)``; 1.0 without any held-out good score."""
    good = np.asarray(good_scores, dtype=np.float64)
    return float((1 + int((good >= score).sum())) / (good.size + 1))


def false_alarm_rate(threshold: float, good_scores: Sequence[float]) -> float:
    """Share of held-out good scores at or above ``threshold``; NaN without any."""
    good = np.asarray(good_scores, dtype=np.float64)
    return float((good >= threshold).mean()) if good.size else math.nan


def knn_spread(distances: Sequence[float] | np.ndarray) -> float:
    """std / mean of one patch's k nearest bank distances; NaN for k < 2 or all zero."""
    d = np.asarray(distances, dtype=np.float64).ravel()
    if d.size < 2 or d.mean() <= 0:
        return math.nan
    return float(d.std() / d.mean())


def p_value_words(p: float, n: int, verdict: str) -> str:
    """The p-value in one sentence a quality engineer can act on."""
    if n == 0:
        return "No held-out good images were kept, so the score cannot be compared with any."
    share = f"{round(p * (n + 1)) - 1} of {n} held-out good images"
    floor = 1 / (n + 1)
    if p <= floor + 1e-12:
        return (f"None of the {n} held-out good images scored this high (p-value {p:.2f}, the "
                f"lowest {n} images can show): unlike the good parts seen.")
    if verdict == "defect":
        return (f"{share} scored at least this high (p-value {p:.2f}): good parts sometimes "
                "look like this, so this may be a false alarm.")
    return f"{share} scored at least this high (p-value {p:.2f}): typical of good parts."


def false_alarm_words(rate: float, n: int) -> str:
    if n == 0 or math.isnan(rate):
        return "The false-alarm rate is unknown: no held-out good images were kept."
    hits = round(rate * n)
    tail = (f" (with {n} images a rate below about 1 in {n + 1} cannot be shown)"
            if hits == 0 else "")
    return (f"At this threshold {hits} of {n} held-out good images ({100 * rate:.0f} %) "
            f"would be flagged: the expected false-alarm rate{tail}.")


def spread_words(spread: float, k: int, available: bool = True) -> str:
    if not available:
        return ("Nearest-patch agreement is not available: this model keeps no memory bank "
                "with the training images' positions.")
    if math.isnan(spread):
        return "Nearest-patch agreement needs at least two neighbours."
    if spread < SPREAD_TIGHT:
        return (f"The {k} closest normal patches to the most unusual spot are about equally far "
                f"(spread {spread:.2f}): the score does not hinge on one training patch.")
    if spread < SPREAD_WIDE:
        return (f"The {k} closest normal patches differ somewhat in distance (spread "
                f"{spread:.2f}): the score is fairly stable.")
    return (f"The {k} closest normal patches differ a lot in distance (spread {spread:.2f}): "
            "the score rests on one or two training patches; more good images could move it.")
