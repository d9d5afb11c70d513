"""Greedy k-center coreset: contract, determinism, farthest-point property, covering radius."""

from __future__ import annotations

import pytest
import torch

from engine.coreset import GreedyCoresetSampler, coverage, covering_radius


def _clustered(n: int = 1200, d: int = 48, clusters: int = 12, seed: int = 0) -> torch.Tensor:
    """Tight clusters of very different sizes: random subsets miss the small ones."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 10
    weights = torch.linspace(1.0, 0.02, clusters)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    return centres[labels] + 0.3 * torch.randn(n, d, generator=g)


def _brute_radius(features: torch.Tensor, idx: torch.Tensor) -> float:
    return float(torch.cdist(features.double(), features[idx].double()).min(1).values.max())


@pytest.mark.parametrize(
    ("kwargs", "expected"), [({"ratio": 0.1}, 120), ({"size": 37}, 37), ({"ratio": 1e-6}, 1)]
)
def test_indices_unique_int64_and_sized(kwargs: dict, expected: int) -> None:
    features = _clustered()
    idx = GreedyCoresetSampler(**kwargs, device="cpu").run(features)
    assert idx.dtype == torch.int64 and idx.ndim == 1 and idx.device.type == "cpu"
    assert len(idx) == expected
    assert idx.unique().numel() == expected
    assert int(idx.min()) >= 0 and int(idx.max()) < len(features)


def test_deterministic_per_seed() -> None:
    features = torch.randn(800, 200, generator=torch.Generator().manual_seed(1))
    runs = [GreedyCoresetSampler(size=50, projection_dim=32, seed=s).run(features) for s in (3, 3)]
    assert torch.equal(runs[0], runs[1])
    other = GreedyCoresetSampler(size=50, projection_dim=32, seed=4).run(features)
    assert not torch.equal(runs[0], other)


def test_size_at_least_n_returns_everything() -> None:
    features = torch.randn(10, 4)
    assert torch.equal(GreedyCoresetSampler(size=10).run(features), torch.arange(10))
    assert torch.equal(GreedyCoresetSampler(size=99).run(features), torch.arange(10))
    assert torch.equal(GreedyCoresetSampler(ratio=1.0).run(features), torch.arange(10))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ratio": 0.1, "size": 3}, {"ratio": 0.0}, {"ratio": 1.5}, {"size": 0},
     {"size": 3, "projection_dim": 0}],
)  # fmt: skip
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GreedyCoresetSampler(**kwargs)


def test_empty_or_malformed_features_raise() -> None:
    with pytest.raises(ValueError, match=r"empty features \(0, 8\)"):
        GreedyCoresetSampler(size=3).run(torch.empty(0, 8))
    with pytest.raises(ValueError, match=r"\[N, D\].*\(4, 2, 2\)"):
        GreedyCoresetSampler(size=3).run(torch.zeros(4, 2, 2))
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = torch.randn(20, 4)
        bad[7, 1] = value
        with pytest.raises(ValueError, match="NaN or Inf"):
            GreedyCoresetSampler(size=3).run(bad)
        with pytest.raises(ValueError, match="NaN or Inf"):  # through the random projection
            GreedyCoresetSampler(size=3, projection_dim=2).run(bad)


@pytest.mark.parametrize("projection_dim", [None, 16])
def test_greedy_covers_better_than_random(projection_dim: int | None) -> None:
    features = _clustered()
    m = 24
    greedy = GreedyCoresetSampler(size=m, projection_dim=projection_dim).run(features)
    generator = torch.Generator().manual_seed(0)
    random_radii = [
        covering_radius(features, torch.randperm(len(features), generator=generator)[:m])
        for _ in range(5)
    ]
    assert covering_radius(features, greedy) <= min(random_radii)


def test_farthest_point_on_a_line() -> None:
    # Whatever the random start, the isolated point at 100 is among the first two centres.
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    for seed in range(5):
        idx = GreedyCoresetSampler(size=2, seed=seed, projection_dim=None).run(features)
        assert 4 in idx.tolist()


def test_each_step_takes_the_farthest_point() -> None:
    corners = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]
    features = torch.tensor([*corners, [5.0, 5.0], [1.0, 0.0], [9.0, 9.5]])
    idx = GreedyCoresetSampler(size=5, seed=2, projection_dim=None).run(features)
    for step in range(1, len(idx)):
        to_chosen = torch.cdist(features, features[idx[:step]]).min(1).values
        assert torch.isclose(to_chosen[idx[step]], to_chosen.max())


def test_duplicates_are_never_picked_twice() -> None:
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]).repeat(10, 1)
    idx = GreedyCoresetSampler(size=6).run(features)
    assert idx.unique().numel() == 6
    assert {tuple(p) for p in features[idx[:3]].tolist()} == {(0, 0), (3, 4), (6, 8)}


def test_sampler_leaves_process_wide_threads_alone() -> None:
    """Thread counts are set once per worker process (engine.device), never by compute code
    that may run inside the Streamlit server."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        GreedyCoresetSampler(size=5, device="cpu").run(torch.randn(100, 3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_covering_radius_is_exact() -> None:
    features = torch.randn(3000, 20, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(0, 3000, 37)
    assert covering_radius(features, idx, chunk=256) == pytest.approx(
        _brute_radius(features, idx), rel=1e-5
    )
    assert covering_radius(features, torch.arange(3000)) == 0.0
    with pytest.raises(ValueError, match="empty"):
        covering_radius(features, torch.empty(0, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_exact_mode() -> None:
    features = _clustered()
    cpu = GreedyCoresetSampler(size=40, projection_dim=None, device="cpu").run(features)
    gpu = GreedyCoresetSampler(size=40, projection_dim=None, device="cuda").run(features)
    assert gpu.device.type == "cpu"
    assert covering_radius(features, gpu) == pytest.approx(covering_radius(features, cpu), rel=1e-4)


def test_greedy_loop_reports_progress_and_stops_when_it_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs show the coreset's progress and cancel inside it (a long, silent loop before)."""
    import engine.coreset as coreset

    monkeypatch.setattr(coreset, "PROGRESS_EVERY_S", 0.0)
    features = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    seen: list[float] = []
    coreset.GreedyCoresetSampler(size=50, candidate_factor=None).run(features,
                                                                     progress=seen.append)
    assert len(seen) == 49 and seen == sorted(seen) and seen[0] > 0 and seen[-1] < 1

    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        coreset.GreedyCoresetSampler(size=50).run(features, progress=stop)


def test_two_stage_progress_rises_through_both_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above candidate_factor x size the chunk passes and the final pass both report, in one
    rising 0..1 scale (a stage that sits still for minutes is what issue 9 reported)."""
    import engine.coreset as coreset

    monkeypatch.setattr(coreset, "PROGRESS_EVERY_S", 0.0)
    features = _clustered(n=4000, d=16)
    seen: list[float] = []
    sampler = coreset.GreedyCoresetSampler(size=50, candidate_factor=4, chunk_rows=500)
    idx = sampler.run(features, progress=seen.append)
    local_steps = sum(-(-200 * 500 // 4000) - 1 for _ in range(8))  # 8 chunks, 25 kept each
    assert len(seen) == local_steps + 49
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 1
    share = 200 * 500 / (200 * 500 + 200 * 50)  # the first stage's share of the work
    assert seen[local_steps - 1] < share <= seen[local_steps]
    assert len(idx) == 50 and idx.unique().numel() == 50


def test_two_stage_stays_close_to_exact_and_keeps_every_chunk() -> None:
    """The bounded sampler gives up little covering radius, keeps the small clusters that a
    random subsample misses, and draws candidates from every chunk (every image)."""
    import engine.coreset as coreset

    features = _clustered(n=6000, d=24, clusters=30)
    exact = GreedyCoresetSampler(size=60, candidate_factor=None).run(features)
    fast = GreedyCoresetSampler(size=60, candidate_factor=4, chunk_rows=1000).run(features)
    exact_max, exact_mean = coverage(features, exact)
    fast_max, fast_mean = coverage(features, fast)
    assert fast_max <= 1.25 * exact_max and fast_mean <= 1.25 * exact_mean
    generator = torch.Generator().manual_seed(0)
    random_max = min(covering_radius(features, torch.randperm(6000, generator=generator)[:240])
                     for _ in range(3))  # even 4x as many random rows cover worse
    assert fast_max < random_max
    candidates = coreset._chunk_candidates(features, 240, 1000, generator,
                                           coreset._Ticker(None))
    per_chunk = torch.bincount(candidates // 1000, minlength=6)
    assert per_chunk.tolist() == [40] * 6 and candidates.unique().numel() == 240


def test_two_stage_is_deterministic_and_cancellable() -> None:
    features = _clustered(n=3000, d=16)
    runs = [GreedyCoresetSampler(size=40, chunk_rows=700, seed=5).run(features) for _ in "ab"]
    assert torch.equal(runs[0], runs[1])

    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    import engine.coreset as coreset

    original = coreset.PROGRESS_EVERY_S
    coreset.PROGRESS_EVERY_S = 0.0
    try:
        with pytest.raises(Stop):
            GreedyCoresetSampler(size=40, chunk_rows=700).run(features, progress=stop)
    finally:
        coreset.PROGRESS_EVERY_S = original


def test_coverage_mean_is_the_mean_nearest_distance() -> None:
    features = torch.randn(500, 6, generator=torch.Generator().manual_seed(3))
    idx = torch.arange(0, 500, 9)
    radius, mean = coverage(features, idx, chunk=128)
    nearest = torch.cdist(features.double(), features[idx].double()).min(1).values
    assert radius == pytest.approx(float(nearest.max()), rel=1e-5)
    assert mean == pytest.approx(float(nearest.mean()), rel=1e-3)
