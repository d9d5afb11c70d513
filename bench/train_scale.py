"""Training at scale: 200 good 1024-px images through the job's code path (``train_model``).

    python bench/train_scale.py [--n-train 200] [--size 1024] [--data DIR] [--keep DIR]

Generates ``n-train`` good parts (textured like machined metal, the pattern of
``tests/synthetic.py`` at full size) plus a few held-out good and defect images in MVTec layout
(or uses ``--data``), indexes them as the project flow does and trains at default settings with
the same progress and cancel callbacks a job passes. Prints one JSON line: total and per-stage
seconds, the longest gap between two progress reports (the page's liveness), peak RSS and bank
size. Targets (issue 9): total <= 120 s and gap <= 2 s on the 2-core dev box.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402


def part(rng, size: int):  # noqa: ANN001, ANN201 - numpy is imported lazily
    """A good part: brushed stripes at a random phase and angle, fine grain, slight tint."""
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase, angle = rng.uniform(0, 2 * np.pi), rng.uniform(-0.1, 0.1)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    base = 128 + 40 * np.sin(u / 5.0 + phase) + 15 * np.sin(yy / 17.0 + phase / 2)
    gray = np.clip(base + rng.normal(0, 7, (size, size)), 0, 255).astype(np.uint8)
    gray = cv2.GaussianBlur(gray, (0, 0), 0.8)
    return np.stack([gray, (gray * 0.95).astype(np.uint8), (gray * 0.9).astype(np.uint8)], -1)


def generate(root: Path, n_train: int, n_test_good: int, n_defect: int, size: int,
             seed: int) -> Path:
    """MVTec layout under ``root`` (skipped when it is already complete)."""
    import numpy as np

    from tests.synthetic import with_defect, write_png

    marker = root / f".complete-{n_train}-{n_test_good}-{n_defect}-{size}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        write_png(root / "train" / "good" / f"good_{i:03d}.png", part(rng, size))
    for i in range(n_test_good):
        write_png(root / "test" / "good" / f"good_{i:03d}.png", part(rng, size))
    for i in range(n_defect):
        image, mask = with_defect(rng, part(rng, size))
        write_png(root / "test" / "spot" / f"spot_{i:03d}.png", image)
        write_png(root / "ground_truth" / "spot" / f"spot_{i:03d}_mask.png",
                  mask.astype(np.uint8) * 255)
    marker.touch()
    return root


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test-good", type=int, default=6)
    parser.add_argument("--n-defect", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="an MVTec-layout folder instead")
    parser.add_argument("--keep", default=None, help="generate into (and reuse) this folder")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="model param key=value")
    args = parser.parse_args(argv)

    from engine.device import configure_worker_process

    threads = configure_worker_process(args.threads)
    from engine.data import discover
    from services.training.fit import train_model

    tmp = None
    if args.data:
        root = Path(args.data)
    else:
        if args.keep:
            root = Path(args.keep)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="kensa-train-scale-")
            root = Path(tmp.name)
        started = time.perf_counter()
        generate(root, args.n_train, args.n_test_good, args.n_defect, args.size, args.seed)
        print(f"[bench/train_scale] data ready in {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
    index = discover(root, validate=False)
    params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}

    stages: dict[str, list[float]] = {}
    gaps: list[tuple[float, str]] = []
    last = [time.perf_counter(), "start"]

    def progress(stage: str, fraction: float) -> None:
        now = time.perf_counter()
        gaps.append((now - last[0], f"{last[1]} -> {stage}"))
        last[0], last[1] = now, stage
        span = stages.setdefault(stage, [now, now])
        span[1] = now

    polls = [0]

    def cancelled() -> bool:
        polls[0] += 1
        return False

    started = last[0] = time.perf_counter()
    outcome = train_model(index, params=params, progress=progress, cancelled=cancelled)
    total = time.perf_counter() - started
    gap, where = max(gaps) if gaps else (total, "no report")
    names = list(stages)
    per_stage = {}
    for i, stage in enumerate(names):  # a stage lasts until the next one starts
        end = stages[names[i + 1]][0] if i + 1 < len(names) else time.perf_counter()
        per_stage[stage] = round(end - stages[stage][0], 2)
    result: dict[str, object] = {
        "n_train": len(outcome.shots), "held_out": len(outcome.validation.paths),
        "size": args.size, "torch_threads": threads,
        "total_s": round(total, 2), "fit_s": round(outcome.fit.fit_seconds, 2),
        "stages_s": per_stage, "max_gap_s": round(gap, 3), "max_gap_at": where,
        "reports": len(gaps), "cancel_polls": polls[0],
        "n_patches": outcome.fit.n_patches, "bank_size": outcome.fit.bank_size,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # CPU seconds of this process: close to the wall time on an idle machine (one torch
        # thread), whatever else was running during the measurement
        "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "image_auroc": outcome.metrics.get("image_auroc"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
