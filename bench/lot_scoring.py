"""Benchmark scoring a production lot through the service against the model's ``score()`` alone.

Issue 10's budget: ``score_batch`` (read + sha256 + decode each file, score, regions, heatmap
PNG, database rows) must run at >= 0.8x the rate of ``model.score()`` on the same, already
decoded images, one image per call as the service does: the database and heatmap writes must
not dominate. Run from the repo root: ``python bench/lot_scoring.py [--images 64 --size 384]``.

A tiny project (generated textures at ``--size`` px, scored at the model's default image size
unless ``--image-size``) is trained first; the lot is ``--images`` fresh generated parts. The
model is loaded once and passed to ``score_batch`` (as the pages do through their model
cache), so both sides time scoring, not loading. Progress goes to stderr; the last stdout line
is one JSON object (images/s of each, ratio, target, within_target, load_avg_1m).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.data import load_image  # noqa: E402
from services.context import Kensa  # noqa: E402
from services.data.projects import create_project  # noqa: E402
from services.inference.batches import get_active_model, load_model, score_batch  # noqa: E402
from services.training.project import train_project  # noqa: E402
from tests.synthetic import make_mvtec, texture, with_defect, write_png  # noqa: E402

TARGET = 0.8


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=384, help="generated image side, px")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: the model's own default)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {} if args.image_size is None else {"image_size": args.image_size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ctx = Kensa.create(root / "home", f"sqlite:///{root / 'kensa.db'}")
        data = make_mvtec(root / "data" / "bench", n_train=6, n_test_good=4, n_defect=2,
                          size=args.size, seed=0)
        create_project(ctx, "bench", data)
        train_project(ctx, "bench", shots=None, seed=0, params=params)
        print("[bench/lot_scoring] trained", file=sys.stderr, flush=True)
        rng = np.random.default_rng(1)
        lot = root / "lot"
        for i in range(args.images):  # one in eight a defect: regions get computed too
            image = texture(rng, args.size)
            if i % 8 == 7:
                image, _ = with_defect(rng, image)
            write_png(lot / f"part_{i:04d}.png", image)
        loaded = load_model(get_active_model(ctx, "bench"))
        images = [load_image(p) for p in sorted(lot.iterdir())]
        loaded.model.score(images[:1])  # warm-up: first-call allocations out of both timings
        start = time.perf_counter()
        for image in images:
            loaded.model.score([image])
        alone = time.perf_counter() - start
        start = time.perf_counter()
        result = score_batch(ctx, "bench", lot, "bench lot", model=loaded)
        service = time.perf_counter() - start
        assert result.scored == args.images, result.problems
        ctx.close()
    ratio = alone / service
    out: dict[str, object] = {
        "bench": "lot_scoring", "images": args.images, "image_px": args.size,
        "model_image_size": args.image_size or "default", "threads": args.threads,
        "score_alone_s": round(alone, 3), "score_batch_s": round(service, 3),
        "score_alone_images_per_s": round(args.images / alone, 2),
        "score_batch_images_per_s": round(args.images / service, 2),
        "ratio": round(ratio, 3), "target": TARGET, "within_target": ratio >= TARGET,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
