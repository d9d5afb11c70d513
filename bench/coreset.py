"""Benchmark Kensa's greedy coreset against anomalib's ``KCenterGreedy`` on seeded random features.

Run from the repo root: ``python bench/coreset.py [--n 40960 --d 384 --ratio 0.1 --seed 0]``.
Both samplers see the same standard-normal features; both covering radii are measured by the same
exact function in the original space. Progress goes to stderr; the last stdout line is one JSON
object (kensa_s, anomalib_s, speedup, kensa_radius, anomalib_radius, radius_ratio, ...).
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

from engine.coreset import GreedyCoresetSampler, covering_radius  # noqa: E402
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


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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

    features = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(args.seed))
    log(
        f"features {tuple(features.shape)}, ratio {args.ratio}, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"
    )

    sampler = GreedyCoresetSampler(
        ratio=args.ratio, projection_dim=args.projection_dim or None, seed=args.seed
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
