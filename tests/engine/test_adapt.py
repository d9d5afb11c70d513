"""engine.adapt.AdaptiveInference: what an opted-in lot may teach the bank, and the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from engine.adapt import AdaptiveInference, Scored


def _stream(scores: list[float], band: set[int] = frozenset(), defect: set[int] = frozenset()
            ) -> list[Scored]:
    return [Scored(f"img{i}", s, "defect" if i in defect else "good", i in band)
            for i, s in enumerate(scores)]


def test_only_confident_normals_in_chunks_never_the_review_band() -> None:
    ai = AdaptiveInference(band_low=10.0, seed_scores=[5.0, 6.0, 7.0], chunk=3)
    items = _stream([1, 2, 11, 3, 9.5, 4, 5, 2], band={4}, defect={7})
    chunks = ai.feed(items)
    assert [c.keys for c in chunks] == [("img0", "img1", "img3")]
    assert ai.waiting == 2 and ai.taken == 3  # img5, img6 wait for a third
    assert ai.skipped_band == 1  # 9.5 is below band_low but IN the band: never learned
    assert all(k not in sum((c.keys for c in chunks), ()) for k in ("img2", "img4", "img7"))


def test_threshold_is_running_mean_plus_three_sigma_of_the_window() -> None:
    ai = AdaptiveInference(band_low=100.0, seed_scores=[10.0, 12.0], chunk=2, window=4)
    assert ai.threshold == pytest.approx(11.0 + 3 * np.std([10, 12], ddof=1))
    (chunk,) = ai.feed(_stream([20.0, 22.0]))
    window = [10.0, 12.0, 20.0, 22.0]
    assert chunk.threshold == pytest.approx(np.mean(window) + 3 * np.std(window, ddof=1))
    (chunk,) = ai.feed(_stream([30.0, 32.0]))  # the window slides: the seed scores leave it
    window = [20.0, 22.0, 30.0, 32.0]
    assert chunk.threshold == pytest.approx(np.mean(window) + 3 * np.std(window, ddof=1))
    assert chunk.params["window"] == 4 and chunk.params["sigmas"] == 3.0


def test_cap_limits_what_one_lot_adds() -> None:
    ai = AdaptiveInference(band_low=50.0, seed_scores=[1.0, 2.0], chunk=4, cap=8)
    chunks = ai.feed(_stream([1.0] * 30))
    assert [len(c.keys) for c in chunks] == [4, 4] and ai.taken == 8 and ai.waiting == 0


def test_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        AdaptiveInference(band_low=float("nan"))
    with pytest.raises(ValueError):
        AdaptiveInference(band_low=1.0, chunk=0)
