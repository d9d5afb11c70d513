"""Benchmark Kensa's greedy coreset against anomalib's ``KCenterGreedy`` on seeded random features.

Run from the repo root: ``python bench/coreset.py [--n 40960 --d 384 --ratio 0.1 --seed 0]``.
Both samplers see the same standard-normal features; both covering radii are measured by the same
exact function in the original space. Progress goes to stderr; the last stdout line is one JSON
object (kensa_s, anomalib_s, speedup, kensa_radius, anomalib_radius, radius_ratio, ...).

``--data DIR --shots K [--size 10000]`` (or ``--synthetic N``: N generated 1024-px parts) instead
compares the default two-stage sampler with the exact single greedy pass on real patch features
of the default detector (K seeded ``train/good`` images with their views): seconds of each, and
the coverage over ALL patches (max = covering radius, and mean distance to the nearest kept
patch), so what the bounded sampler gives up is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's per-step progress bar would flood stderr

import torch  # noqa: E402

from engine.coreset import (  # noqa: E402
    CHUNK_ROWS,
    GreedyCoresetSampler,
    coverage,
    covering_radius,
)
from engine.device import configure_worker_process  # noqa: E402


def log(message: str) -> None:
    print(f"[bench/coreset] {message}", file=sys.stderr, flush=True)


def run_anomalib(features: torch.Tensor, ratio: float, seed: int) -> tuple[float, torch.Tensor]:
    """Time ``KCenterGreedy(...).sample_coreset()``; also capture the indices it selected."""
    from anomalib.models.components.sampling.k_center_greedy import KCenterGreedy

    torch.manual_seed(seed)  # anomalib draws its first centre from the global generator
    sampler = KCenterGreedy(embedding=features, sampling_ratio=ratio)
    selected: dict[str, list[int]] = {}
    select = sampler.select_coreset_idxs

    def capture() -> list[int]:
        selected["idx"] = select()
        return selected["idx"]

    sampler.select_coreset_idxs = capture  # type: ignore[method-assign]
    start = time.perf_counter()
    sampler.sample_coreset()
    seconds = time.perf_counter() - start
    return seconds, torch.tensor(selected["idx"], dtype=torch.long)


def real_features(data: str | None, shots: int, synthetic: int, seed: int) -> torch.Tensor:
    """Patch vectors exactly as ``FewShotPatchCore.fit`` builds them before its coreset."""
    import numpy as np

    from engine.data import discover, load_image
    from engine.models.augment_views import views_for
    from engine.models.fewshot import FewShotPatchCore
    from engine.models.preprocess import to_tensor

    model = FewShotPatchCore()
    if data:
        from bench.fewshot import choose_shots

        paths = [r.path for r in discover(data, validate=False).select(split="train",
                                                                       label="good")]
        images = [load_image(p) for p in choose_shots(paths, shots, seed)]
    else:
        from bench.train_scale import part

        rng = np.random.default_rng(seed)
        images = [part(rng, 1024) for _ in range(synthetic)]
    tensors = [to_tensor(image, model.config.image_size) for image in images]
    model.state.intensity = (float(np.mean([t.mean() for t in tensors])),
                             float(np.mean([t.std() for t in tensors])))
    with torch.inference_mode():
        vectors, _ = model.embed(tensors, views_for(model.config.views, len(images)))
    return vectors


def compare_real(args: argparse.Namespace) -> dict[str, object]:
    """Default (two-stage) sampler against the exact greedy pass on the same real features."""
    started = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        features = torch.load(cache)
    else:
        features = real_features(args.data, args.shots, args.synthetic, args.seed)
        if cache is not None:
            torch.save(features, cache)
    extract_s = time.perf_counter() - started
    log(f"features {tuple(features.shape)} in {extract_s:.1f} s; bank size {args.size}")
    result: dict[str, object] = {
        "data": args.data or f"synthetic x{args.synthetic}", "shots": args.shots,
        "seed": args.seed, "n": features.shape[0], "d": features.shape[1], "size": args.size,
        "torch_threads": torch.get_num_threads(),
    }
    fast: dict[str, object] = {"chunk_rows": args.chunk_rows}
    if args.candidate_factor:
        fast["candidate_factor"] = args.candidate_factor
    if args.projection_dim != 128:
        fast["projection_dim"] = args.projection_dim or None
    result["fast_settings"] = fast
    variants = {"fast": fast, "exact": {"candidate_factor": None}}
    for name, kwargs in variants.items():
        if name == "exact" and args.skip_exact:
            continue
        gaps: list[float] = []
        last = [time.perf_counter()]

        def tick(fraction: float, gaps: list[float] = gaps, last: list[float] = last) -> None:
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        sampler = GreedyCoresetSampler(size=args.size, seed=args.seed, **kwargs)
        start = last[0] = time.perf_counter()
        idx = sampler.run(features, progress=tick)
        seconds = time.perf_counter() - start
        gaps.append(time.perf_counter() - last[0])
        radius, mean = coverage(features, idx)
        log(f"{name}: {seconds:.1f} s, radius {radius:.4f}, mean {mean:.4f}")
        result.update({f"{name}_s": round(seconds, 2), f"{name}_radius": round(radius, 4),
                       f"{name}_mean_dist": round(mean, 4),
                       f"{name}_max_progress_gap_s": round(max(gaps), 3)})
    if "exact_s" in result:
        result["speedup"] = round(float(result["exact_s"]) / float(result["fast_s"]), 2)
        result["radius_ratio"] = round(float(result["fast_radius"])
                                       / float(result["exact_radius"]), 4)
        result["mean_ratio"] = round(float(result["fast_mean_dist"])
                                     / float(result["exact_mean_dist"]), 4)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="MVTec folder: compare on real features")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--synthetic", type=int, default=0,
                        help="compare on N generated 1024-px parts instead of --data")
    parser.add_argument("--size", type=int, default=10_000, help="bank size (real features)")
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--cache", default=None, help="save/load the real features here (.pt)")
    parser.add_argument("--candidate-factor", type=float, default=None,
                        help="fast sampler's candidates per kept row (default: the engine's)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    parser.add_argument("--n", type=int, default=40960)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projection-dim", type=int, default=128, help="0 = no projection")
    parser.add_argument("--skip-anomalib", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: as a worker, see engine.device)")
    args = parser.parse_args(argv)
    configure_worker_process(args.threads)
    if args.data or args.synthetic:
        real = compare_real(args)
        print(json.dumps(real), flush=True)
        return real

    features = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(args.seed))
    log(
        f"features {tuple(features.shape)}, ratio {args.ratio}, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"
    )

    sampler = GreedyCoresetSampler(  # the exact single pass: anomalib's algorithm, faster
        ratio=args.ratio, projection_dim=args.projection_dim or None, seed=args.seed,
        candidate_factor=None,
    )
    start = time.perf_counter()
    kensa_idx = sampler.run(features)
    features[kensa_idx]  # same output as sample_coreset, for a like-for-like time
    kensa_s = time.perf_counter() - start
    kensa_radius = covering_radius(features, kensa_idx)
    log(f"kensa: {len(kensa_idx)} centres in {kensa_s:.2f} s, covering radius {kensa_radius:.4f}")

    result: dict[str, object] = {
        "n": args.n, "d": args.d, "ratio": args.ratio, "seed": args.seed,
        "projection_dim": args.projection_dim or None, "torch_threads": torch.get_num_threads(),
        "kensa_s": round(kensa_s, 3), "kensa_radius": round(kensa_radius, 4),
        "anomalib_s": None, "anomalib_radius": None, "speedup": None, "radius_ratio": None,
    }  # fmt: skip
    if not args.skip_anomalib:
        log("anomalib KCenterGreedy: running (about a minute or two on 2 CPU cores) ...")
        anomalib_s, anomalib_idx = run_anomalib(features, args.ratio, args.seed)
        anomalib_radius = covering_radius(features, anomalib_idx)
        log(
            f"anomalib: {len(anomalib_idx)} centres in {anomalib_s:.2f} s, "
            f"covering radius {anomalib_radius:.4f}"
        )
        result.update(
            anomalib_s=round(anomalib_s, 3),
            anomalib_radius=round(anomalib_radius, 4),
            speedup=round(anomalib_s / kensa_s, 2),
            radius_ratio=round(kensa_radius / anomalib_radius, 4),
        )
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
