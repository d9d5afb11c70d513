"""A threshold without defect images: synthetic calibration against the real defects.

    python bench/calibration.py --data DIR --shots 1,4,16 --seeds 0 [--held-out 8] [--json FILE]

A project with no defect images sets its threshold on synthetic defects painted into its
held-out good images (``services.training.fit.synthetic_threshold``, the function training
calls). This measures what that threshold is worth on the REAL defects of a data set: for every
(shots, seed) it fits the default detector on ``shots`` seeded ``train/good`` images, holds out
``--held-out`` other ``train/good`` images (what such a project would have), and scores the
whole test split. Each row gives F1, precision and recall on the test split at

- ``synthetic``: the synthetic-calibrated threshold (the product's rule);
- ``mean_3sigma``: mean + 3 sigma of the held-out good scores (the rule before issue 12);
- ``best``: the F1-optimal threshold chosen on the test split itself (an oracle: the most any
  single threshold can give on these images, so the other two are read against it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402
from bench.fewshot import choose_shots, stratified_tests  # noqa: E402


def at_threshold(scores, labels, threshold: float) -> dict[str, float]:
    """F1, precision and recall of ``score >= threshold`` (the project-wide convention)."""
    flagged = scores >= threshold
    tp = int((flagged & (labels == 1)).sum())
    fp = int((flagged & (labels == 0)).sum())
    fn = int((~flagged & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
            "false_alarm_rate": round(float(fp / max(1, int((labels == 0).sum()))), 4),
            "threshold": round(float(threshold), 5)}


def run(data: Path, shots: int, seed: int, held_out: int, subset: list[int] | None
        ) -> dict[str, object]:
    import numpy as np

    from engine import thresholds
    from engine.data import discover, load_image
    from engine.models.fewshot import FewShotConfig, FewShotPatchCore
    from services.training.fit import synthetic_threshold

    index = discover(data, validate=False)
    goods = sorted(r.path for r in index.select(split="train", label="good"))
    train = choose_shots(goods, shots, seed)
    rest = [p for p in goods if p not in set(train)]
    rng = np.random.default_rng([seed, 1])
    kept = [rest[i] for i in sorted(rng.choice(len(rest), size=min(held_out, len(rest)),
                                               replace=False))]
    started = time.perf_counter()
    model = FewShotPatchCore(FewShotConfig(seed=seed))
    model.fit([load_image(p) for p in train])
    held = [load_image(p) for p in kept]
    synthetic, validation = synthetic_threshold(model, held, seed=seed)
    old = thresholds.mean_k_sigma(validation.normal_scores, k=3.0)
    tests = stratified_tests(index, *subset) if subset else index.select(split="test")
    labels = np.asarray([int(r.label == "defect") for r in tests])
    scores = np.asarray([float(model.score([load_image(r.path)]).scores[0]) for r in tests])
    best = thresholds.f1_optimal(scores, labels)
    n_synthetic = int((validation.labels == 1).sum())
    return {
        "category": data.name, "shots": shots, "seed": seed, "held_out_goods": len(kept),
        "synthetic_defects": n_synthetic, "synthetic_method": synthetic.method,
        "n_test": len(tests), "n_test_defect": int(labels.sum()), "subset": subset,
        "synthetic": at_threshold(scores, labels, synthetic.value),
        "mean_3sigma": at_threshold(scores, labels, old.value),
        "best": at_threshold(scores, labels, best.value),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", required=True, help="dataset folder in MVTec layout")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--held-out", type=int, default=8,
                        help="good train images kept aside for the threshold (default 8)")
    parser.add_argument("--subset", type=int, nargs=2, metavar=("GOODS", "PER_TYPE"),
                        help="a fixed stratified test subset (bench/fewshot.py's) instead of all")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    from engine.device import configure_worker_process

    configure_worker_process()
    rows = []
    for shots in [int(s) for s in args.shots.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            row = run(Path(args.data), shots, seed, args.held_out, args.subset)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(rows, indent=2))
    mean = {rule: round(sum(r[rule]["f1"] for r in rows) / len(rows), 4)  # type: ignore[index]
            for rule in ("synthetic", "mean_3sigma", "best")}
    print(json.dumps({"mean_f1": mean}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
