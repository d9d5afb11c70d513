"""Peak memory of Kensa's default detector on large images.

    python bench/memory.py [--shots 64] [--size 1024] [--score 8]

Generates ``shots`` good parts of ``size`` x ``size`` pixels (textured, like machined metal),
fits the default detector on them and scores ``score`` more, all in this fresh process, then
prints one JSON line with ``peak_rss_mb`` (target: <= 2,000 MB for k <= 64 at 1024 x 1024).
Images are produced one at a time, as a loader streaming from disk would, but the fit holds them
all, as the service does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402


def part(rng, size: int):
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 6.28)
    base = 128 + 40 * np.sin(xx / 5.0 + phase) + 15 * np.sin(yy / 11.0)
    gray = np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak RSS of fit + score on large images")
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--score", type=int, default=8)
    args = parser.parse_args(argv)

    import numpy as np

    from engine.models.fewshot import FewShotPatchCore

    rng = np.random.default_rng(0)
    images = [part(rng, args.size) for _ in range(args.shots)]
    baseline = peak_rss_mb()
    model = FewShotPatchCore()
    started = time.perf_counter()
    report = model.fit(images)
    fit_s = time.perf_counter() - started
    queries = [part(rng, args.size) for _ in range(args.score)]
    started = time.perf_counter()
    for image in queries:
        model.score([image])
    print(json.dumps({
        "shots": args.shots,
        "size": args.size,
        "bank_size": report.bank_size,
        "n_patches": report.n_patches,
        "fit_s": round(fit_s, 2),
        "ms_per_image": round(1000 * (time.perf_counter() - started) / max(1, args.score), 1),
        "images_mb": round(sum(i.nbytes for i in images) / 2**20, 1),
        "rss_before_fit_mb": round(baseline, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
