"""Time the Augmentation page's grid: 12 images of 512 px augmented (target: under 1 s).

What a slider move costs on the page: ``services.augmentation.preview.render_preview`` on the
cached sample (reading and shrinking the files is cached by the page, so it is not timed here).
Timed, each as the median of ``--runs`` runs after one untimed warm-up:

* ``defaults``: every offered transform on, at its default settings and chance (the target
  applies to this one: a user rarely switches on more);
* ``every_step``: the same with chance 1, so every step runs on every image (the worst case);
* ``per_transform_s``: each transform alone at chance 1, to show which ones cost the most.

    python bench/augment_grid.py [--data DIR] [--images 12 --side 512 --runs 5]

Without ``--data`` the images are generated (textured parts, a third with a drawn defect and
its mask); with it, the first ``--images`` image files found under DIR are read and shrunk to
``--side`` px. Progress goes to stderr; stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402
from engine.data import load_image  # noqa: E402
from engine.imaging import shrink_to_fit  # noqa: E402
from services.augmentation.preview import PreviewImage, render_preview  # noqa: E402
from services.augmentation.schema import TRANSFORMS, default_step  # noqa: E402
from tests.synthetic import texture, with_defect  # noqa: E402

TARGET_S = 1.0
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _images(args: argparse.Namespace) -> list[PreviewImage]:
    if args.data:
        files = sorted(p for p in Path(args.data).rglob("*")
                       if p.suffix.lower() in SUFFIXES and "mask" not in p.stem.lower())
        if not files:
            sys.exit(f"{args.data}: no image files found")
        return [(p.name, "good", shrink_to_fit(load_image(p), args.side), None)
                for p in files[: args.images]]
    rng = np.random.default_rng(0)
    out: list[PreviewImage] = []
    for i in range(args.images):
        image = texture(rng, args.side)
        if i % 3 == 2:
            image, mask = with_defect(rng, image)
            out.append((f"defect_{i}.png", "defect", image, mask))
        else:
            out.append((f"good_{i}.png", "good", image, None))
    return out


def _config(chance: float | None, names: tuple[str, ...] = tuple(TRANSFORMS)
            ) -> dict[str, object]:
    steps = []
    for name in names:
        step = default_step(name)
        steps.append({"name": name, "p": step.p if chance is None else chance,
                      "params": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in step.params.items()}})
    return {"version": 1, "seed": 0, "transforms": steps}


def _time(images: list[PreviewImage], config: dict[str, object], runs: int) -> list[float]:
    render_preview(images, config)  # warm-up: first calls build caches (cv2, noise tables)
    times = []
    for run in range(runs):
        config = {**config, "seed": run + 1}  # another draw each run, as Reshuffle does
        start = time.perf_counter()
        tiles = render_preview(images, config)
        times.append(time.perf_counter() - start)
        assert len(tiles) == len(images)
    return times


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder of images (default: generated images)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--side", type=int, default=512, help="longer side in px")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    images = _images(args)
    print(f"[bench/augment_grid] {len(images)} images, {images[0][2].shape}", file=sys.stderr)
    result: dict[str, object] = {"images": len(images),
                                 "shape": list(images[0][2].shape),
                                 "transforms": len(TRANSFORMS), "target_s": TARGET_S}
    for label, chance in (("defaults", None), ("every_step", 1.0)):
        times = _time(images, _config(chance), args.runs)
        result[f"{label}_median_s"] = round(statistics.median(times), 3)
        result[f"{label}_max_s"] = round(max(times), 3)
        print(f"[bench/augment_grid] {label}: {[round(t, 3) for t in times]}", file=sys.stderr)
    result["within_target"] = result["defaults_median_s"] < TARGET_S
    alone = {name: round(statistics.median(_time(images, _config(1.0, (name,)), args.runs)), 3)
             for name in TRANSFORMS}
    result["per_transform_s"] = dict(sorted(alone.items(), key=lambda kv: -kv[1]))
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
