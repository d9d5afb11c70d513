"""Online adaptive inference: which scored images may feed the bank, and the threshold after.

The original notes' ``AdaptiveInference``, without the silent part: this class only DECIDES.
Given the stream of (score, verdict, in review band) of a lot, in scoring order, it

* selects images scored **confidently normal**: verdict good and raw score below the review
  band's lower edge (never inside the band: an image a person should look at must not teach
  the model what good looks like, and a defect scored just under the threshold would be
  learned as good for ever);
* groups them in chunks of ``chunk`` (default :data:`CHUNK` = 8): each full chunk is one bank
  update, i.e. one new bank version the caller writes with its own threshold row, so every
  change is visible in the history and can be rolled back; a partial chunk waits;
* stops at ``cap`` images per lot (default :data:`LOT_CAP` = 32): one lot, maybe under an
  unnoticed shift, cannot dominate the bank;
* keeps a running window of the last ``window`` normal scores (default :data:`WINDOW` = 64,
  seeded with the held-out good scores of the current threshold) and proposes
  threshold = mean + 3 sigma of that window (method :data:`METHOD`).

Why mean + 3 sigma of recent normals: it follows a slow, benign drift of the normal scores
(the lamp ages) without labels; the cap, the band rule and the version-per-chunk keep it from
following a fast one unnoticed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CHUNK = 8
LOT_CAP = 32
WINDOW = 64
SIGMAS = 3.0
METHOD = "running_mean_3sigma"


@dataclass(frozen=True)
class Scored:
    """One scored image of the stream: its key (sha256 or path), raw score, verdict, and
    whether it lies in the review band (scores a person is asked to check)."""

    key: str
    score: float
    verdict: str
    in_review_band: bool


@dataclass(frozen=True)
class Chunk:
    """A full chunk to learn: the images, and the threshold proposed once they are learned."""

    keys: tuple[str, ...]
    scores: tuple[float, ...]
    threshold: float
    params: dict[str, float | int | list[float]]


@dataclass
class AdaptiveInference:
    """Decides, image by image, what an opted-in lot teaches the bank (see module docstring).

    ``band_low`` is the review band's lower edge in raw-score units: only scores strictly below
    it are confidently normal. ``seed_scores`` start the running window (the held-out good
    scores the current threshold was chosen on), so the first proposal is not made from a
    handful of images.
    """

    band_low: float
    seed_scores: Sequence[float] = ()
    chunk: int = CHUNK
    cap: int = LOT_CAP
    window: int = WINDOW
    taken: int = 0
    skipped_band: int = 0
    _pending: list[Scored] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.cap < 0 or self.window < 2:
            raise ValueError("chunk must be >= 1, cap >= 0 and window >= 2")
        if not np.isfinite(self.band_low):
            raise ValueError("the review band's lower edge must be a finite score")
        self._recent = deque((float(s) for s in self.seed_scores), maxlen=self.window)

    @property
    def threshold(self) -> float:
        """mean + 3 sigma of the running window (NaN with fewer than 2 scores in it)."""
        if len(self._recent) < 2:
            return float("nan")
        values = np.asarray(self._recent, dtype=np.float64)
        return float(values.mean() + SIGMAS * values.std(ddof=1))

    def confident(self, item: Scored) -> bool:
        """Confidently normal: called good and below the review band (never inside it)."""
        return (item.verdict == "good" and not item.in_review_band
                and np.isfinite(item.score) and item.score < self.band_low)

    def feed(self, items: Iterable[Scored]) -> list[Chunk]:
        """Consume scored images in order; returns the chunks completed by them."""
        done = []
        for item in items:
            if item.in_review_band:
                self.skipped_band += 1
            if not self.confident(item) or self.taken + len(self._pending) >= self.cap:
                continue
            self._pending.append(item)
            if len(self._pending) == self.chunk:
                done.append(self._close())
        return done

    def _close(self) -> Chunk:
        part, self._pending = self._pending, []
        self.taken += len(part)
        self._recent.extend(i.score for i in part)
        values = list(self._recent)
        return Chunk(tuple(i.key for i in part), tuple(i.score for i in part), self.threshold,
                     {"window": len(values), "window_size": self.window, "sigmas": SIGMAS,
                      "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                      "chunk": self.chunk, "cap": self.cap, "band_low": self.band_low,
                      "window_scores": values})

    @property
    def waiting(self) -> int:
        """Confident images held back until a chunk is full."""
        return len(self._pending)
