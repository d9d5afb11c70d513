"""Quick config search for the few-shot detector on a stratified test subset.

    python bench/fewshot_search.py --data DIR --configs '[{}, {"image_size": 448}]' \
        [--shots 1,4] [--seed 0] [--per-type 24] [--goods 60]

A config may hold ``"coreset": "exact"`` to fit with the exact single-pass greedy coreset
instead of the bounded two-stage sampler (the before/after of issue 9).

Faster than bench/fewshot.py (no subprocesses, no timing, a subset of the test split: up to
``--goods`` good and ``--per-type`` images of each defect type, chosen with a fixed seed), so a
handful of settings can be compared in minutes. Prints one JSON line per (config, shots) with
image AUROC, pixel AUROC, AUPRO and the pixel AUROC of each defect type against the goods.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fewshot import choose_shots, stratified_tests  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="few-shot config search on a test subset")
    parser.add_argument("--data", required=True)
    parser.add_argument("--configs", default="[{}]", help="JSON list of FewShotConfig overrides")
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-type", type=int, default=24)
    parser.add_argument("--goods", type=int, default=60)
    args = parser.parse_args(argv)

    import numpy as np

    from engine.data import discover, load_image, load_mask
    from engine.metrics import image_metrics, pixel_metrics
    from engine.models.fewshot import FewShotConfig, FewShotPatchCore

    index = discover(Path(args.data), validate=False)
    tests = stratified_tests(index, args.goods, args.per_type)
    images = [load_image(r.path) for r in tests]
    masks = [load_mask(r.mask_path, im.shape[:2]) if r.mask_path else None
             for r, im in zip(tests, images, strict=True)]
    labels = np.array([int(r.label == "defect") for r in tests])
    goods = [r.path for r in index.select(split="train", label="good")]
    import functools

    import engine.models.fewshot as fewshot
    from engine.coreset import GreedyCoresetSampler

    for overrides in json.loads(args.configs):
        # "coreset": "exact" = the single exact greedy pass (before issue 9), for comparison
        exact = dict(overrides).pop("coreset", None) == "exact"
        fewshot.GreedyCoresetSampler = (  # type: ignore[misc]
            functools.partial(GreedyCoresetSampler, candidate_factor=None) if exact
            else GreedyCoresetSampler)
        settings = {k: v for k, v in overrides.items() if k != "coreset"}
        for shots in [int(s) for s in args.shots.split(",")]:
            model = FewShotPatchCore(FewShotConfig(seed=args.seed, **settings))
            report = model.fit([load_image(p) for p in choose_shots(goods, shots, args.seed)])
            result = model.score(images)
            # Defect images without a mask cannot be scored per pixel (their defect would count
            # as background), so they are left out of the pixel metrics.
            usable = [i for i, r in enumerate(tests) if r.label == "good" or masks[i] is not None]
            pixel = pixel_metrics([result.maps[i] for i in usable], [masks[i] for i in usable])
            row = {"config": overrides, "shots": shots, "seed": args.seed,
                   "image_auroc": round(image_metrics(result.scores, labels)["image_auroc"], 4),
                   "pixel_auroc": round(pixel["pixel_auroc"], 4),
                   "aupro": round(pixel["aupro"], 4), "bank_size": report.bank_size,
                   "n_patches": report.n_patches, "fit_s": round(report.fit_seconds, 1)}
            for name in dict.fromkeys(r.defect_type or "defect" for r in tests
                                      if r.label == "defect"):
                keep = [i for i in usable
                        if tests[i].label == "good" or (tests[i].defect_type or "defect") == name]
                if any(masks[i] is not None for i in keep):
                    row[f"pixel_auroc_{name}"] = round(pixel_metrics(
                        [result.maps[i] for i in keep], [masks[i] for i in keep])["pixel_auroc"], 3)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
