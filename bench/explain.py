"""Explaining an image against scoring it: JSON ``{score_ms, explain_ms, ratio}`` (target <= 1.5).

Explain = what ``services.inference.explain.explain_image`` computes for the image: one pass
with the k nearest bank vectors per patch, regions with shapes, the nearest-patch crops of
the training images, confidence numbers, and the overlay PNG. Scoring = ``model.score``.
Both are timed warm (medians over ``--repeat`` images after one untimed run each): the first
explain also decodes the training images it crops from, which the service keeps cached.

    python bench/explain.py [--data DIR --shots 4] [--size 384 --repeat 10 --k 3]

Without ``--data`` the images are generated (textured parts with a drawn defect).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402
from engine.data import load_image  # noqa: E402
from engine.device import configure_worker_process  # noqa: E402
from engine.explain import explain_arrays  # noqa: E402
from engine.explain.overlay import encode_png, overlay  # noqa: E402
from engine.models import ImageSource, registry  # noqa: E402


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 40 * np.sin(xx / 3.0 + phase) + 15 * np.sin(yy / 7.0 + phase / 2)
    gray = np.clip(base + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)
    return np.stack([gray, gray, gray], -1)


def _images(args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    if args.data:
        root = Path(args.data)
        goods = sorted((root / "train" / "good").glob("*"))[: args.shots]
        tests = sorted(p for p in (root / "test").rglob("*") if p.is_file())
        picks = rng.choice(len(tests), size=min(args.repeat + 1, len(tests)), replace=False)
        return [load_image(p) for p in goods], [load_image(tests[i]) for i in picks]
    goods = [_texture(rng, args.size) for _ in range(args.shots)]
    queries = []
    for _ in range(args.repeat + 1):
        image = _texture(rng, args.size)
        c = rng.integers(args.size // 4, 3 * args.size // 4, 2)
        cv2.circle(image, (int(c[0]), int(c[1])), args.size // 20, (20, 20, 25), -1)
        queries.append(image)
    return goods, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MVTec-layout folder (default: generated images)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--size", type=int, default=384, help="generated image side")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    configure_worker_process()
    goods, queries = _images(args)
    model = registry.create("kensa_patchcore")
    model.fit(goods, sources=[ImageSource(f"train_{i}", "") for i in range(len(goods))])
    normal = [float(s) for s in model.score(queries[:3]).scores]
    threshold = float(np.median(normal) * 1.2)
    records = {r.id: r for r in model.records}

    def explain(image: np.ndarray) -> None:
        ev = explain_arrays(model, image, threshold, normal, k=args.k,
                            resolve=lambda ids: {i: records[i] for i in ids},
                            load=lambda path, sha: goods[int(path.split("_")[1])])
        lo = float(np.median(normal))
        norm = np.clip(0.5 * (ev.score_map - lo) / max(threshold - lo, 1e-12), 0, 1)
        encode_png(overlay(image, norm, contours=[r.shaped.contours for r in ev.regions],
                           boxes=[r.shaped.box for r in ev.regions]))

    score_ms, explain_ms = [], []
    model.score([queries[0]])
    explain(queries[0])  # warm: allocator, first crops
    for image in queries[1:]:
        t = time.perf_counter()
        model.score([image])
        score_ms.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        explain(image)
        explain_ms.append(1000 * (time.perf_counter() - t))
    s, e = statistics.median(score_ms), statistics.median(explain_ms)
    print(json.dumps({"score_ms": round(s, 1), "explain_ms": round(e, 1),
                      "ratio": round(e / s, 3), "images": len(score_ms),
                      "bank": model.vector_count, "k": args.k,
                      "data": args.data or f"generated {args.size} px",
                      "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
