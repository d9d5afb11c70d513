"""The heap trimmer: trims only once the process grew by its budget, and follows memory down."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.heap import HeapTrimmer, resident_mb, trim_heap


class FakeProcess:
    """A resident size the test sets, and a trim that drops it to ``after_trim``."""

    def __init__(self, rss: float, after_trim: float) -> None:
        self.rss = rss
        self.after_trim = after_trim
        self.calls = 0

    def resident(self) -> float:
        return self.rss

    def trim(self) -> bool:
        self.calls += 1
        self.rss = self.after_trim
        return True


def test_no_trim_while_growth_stays_within_budget() -> None:
    proc = FakeProcess(rss=1000.0, after_trim=900.0)
    heap = HeapTrimmer(growth_mb=500, resident=proc.resident, trim=proc.trim)
    for rss in (1000.0, 1200.0, 1499.0, 1300.0):
        proc.rss = rss
        heap.after_image()
    assert proc.calls == 0 and heap.trims == 0


def test_trims_past_budget_and_measures_from_the_level_after_the_trim() -> None:
    proc = FakeProcess(rss=1000.0, after_trim=950.0)
    heap = HeapTrimmer(growth_mb=500, resident=proc.resident, trim=proc.trim)
    heap.after_image()  # the first image sets the level
    proc.rss = 1501.0
    heap.after_image()
    assert proc.calls == 1 and proc.rss == 950.0
    proc.rss = 1449.0  # 499 over the post-trim level of 950: within budget
    heap.after_image()
    assert proc.calls == 1
    proc.rss = 1451.0
    heap.after_image()
    assert proc.calls == 2 and heap.trims == 2


def test_the_level_follows_memory_down() -> None:
    proc = FakeProcess(rss=2000.0, after_trim=0.0)
    heap = HeapTrimmer(growth_mb=500, resident=proc.resident, trim=proc.trim)
    heap.after_image()
    proc.rss = 800.0  # a model or a batch was dropped
    heap.after_image()
    proc.rss = 1400.0  # 600 over the new level, although under the first one
    heap.after_image()
    assert proc.calls == 1


def test_no_trim_where_the_resident_size_is_unknown_or_trim_unavailable() -> None:
    unknown = HeapTrimmer(growth_mb=1, resident=lambda: None, trim=pytest.fail)
    unknown.after_image()
    unknown.after_image()
    sizes = iter([100.0, 5000.0, 5000.0])
    no_libc = HeapTrimmer(growth_mb=1, resident=lambda: next(sizes), trim=lambda: False)
    no_libc.after_image()
    no_libc.after_image()
    assert no_libc.trims == 0


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="growth_mb"):
        HeapTrimmer(growth_mb=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, calls glibc")
def test_real_trim_returns_freed_heap_on_linux() -> None:
    """Many mid-sized blocks freed out of order leave a heap glibc keeps; a trim gives it back."""
    before = resident_mb()
    assert before is not None and before > 0
    # 64 KB blocks: under glibc's smallest mmap threshold, so they come from the heap
    blocks = [np.ones(64 * 1024 // 8, dtype=np.float64) for _ in range(8000)]  # 500 MB
    keep = blocks[::50]  # pinned blocks stop the heap top from shrinking on its own
    del blocks
    swollen = resident_mb()
    assert trim_heap()
    trimmed = resident_mb()
    assert swollen is not None and trimmed is not None
    assert swollen - trimmed > 300, (before, swollen, trimmed)
    del keep
