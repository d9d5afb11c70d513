"""Exported Kensa model on OpenVINO's CPU runtime against torch, in one run, on one dataset.

    python bench/export.py --data DIR --shots N [--seed S] [--threads T] [--json FILE]
                           [--set image_size=384 ...]

Fits Kensa's model on ``N`` good training images (``bench/fewshot.py``'s seeded choice), exports
it as ONNX, OpenVINO FP32 and OpenVINO FP16 (``engine.export``) at the working size of the test
images, and scores the whole test split with each. Prints one JSON line:

- ``torch_app_ms``: ``model.score`` per image, the app's path (resize in, map resized out);
- ``torch_core_ms``: the exported graph itself run in torch (``InferenceCore`` on the resized
  tensor): what the files compute, so the fair comparison with the runtimes below;
- ``<variant>_ms``: OpenVINO CPU per image on the same resized tensor (``onnx`` is the ONNX
  file read by OpenVINO);
- ``<variant>_parity``: max |normalized exported - normalized app| over the test images, the
  normalization of the app (``engine.thresholds.normalize``) with the threshold chosen F1-optimal
  on those same held-out good and defect images and the good ones as normal scores; plus
  ``<variant>_raw_rel``: the largest raw-score difference relative to the app's score.

Times are medians per image after one warm-up image, every variant timed in turn on each image
(so a change of load on a shared machine hits all alike), torch and OpenVINO on ``--threads``
CPU threads each (default 1: the shared 2-core box); they belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb  # noqa: E402
from bench.fewshot import choose_shots  # noqa: E402


def _param(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times[1:] if len(times) > 1 else times), 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="MVTec-layout folder")
    parser.add_argument("--shots", required=True, type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="params", action="append", type=_param, default=[],
                        metavar="KEY=VALUE", help="a FewShotConfig field, e.g. image_size=256")
    parser.add_argument("--json", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from engine.data import discover, load_image
    from engine.export.core import InferenceCore
    from engine.export.formats import ExportedRunner, export_all
    from engine.export.parity import compare, threshold_normalizer
    from engine.models.fewshot import FewShotConfig, FewShotPatchCore
    from engine.thresholds import f1_optimal

    torch.set_num_threads(args.threads)
    index = discover(args.data)
    train = [r.path for r in index.select(split="train", label="good")]
    shots = choose_shots(train, args.shots, args.seed)
    tests = sorted(index.select(split="test"), key=lambda r: str(r.path))
    labels = np.array([r.label == "defect" for r in tests], dtype=int)
    config = FewShotConfig.from_params(dict(args.params))

    started = time.perf_counter()
    model = FewShotPatchCore(config, device="cpu")
    model.fit([load_image(p) for p in shots])
    fit_s = time.perf_counter() - started

    images = [load_image(r.path) for r in tests]
    tensors = [model.working_tensor(im) for im in images]
    size = tuple(tensors[0].shape[-2:])
    keep = [i for i, t in enumerate(tensors) if tuple(t.shape[-2:]) == size]
    core = InferenceCore.from_model(model, *size)
    row: dict = {"data": str(args.data), "shots": args.shots, "seed": args.seed,
                 "image_size": config.image_size, "working_size": list(size),
                 "n_test": len(tests), "n_compared": len(keep), "bank": len(model.bank),
                 "threads": args.threads, "fit_s": round(fit_s, 1), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exported = export_all(core, Path(tmp))
        row["export_s"] = round(time.perf_counter() - t0, 1)
        runners = {v.replace("-", "_"): ExportedRunner(f.path, {"INFERENCE_NUM_THREADS":
                                                                 args.threads})
                   for v, f in exported.items()}
        for variant, files in exported.items():
            row[f"{variant.replace('-', '_')}_mb"] = round(
                sum((files.folder / n).stat().st_size for n in files.files) / 2**20, 1)
        # image by image, every variant in turn: a load change on the shared box hits all alike
        app, times = [], {k: [] for k in ("torch_app", "torch_core", *runners)}
        scores: dict[str, list[float]] = {k: [] for k in runners}
        for i in keep:
            t0 = time.perf_counter()
            app.append(model.score([images[i]]).scores[0])
            times["torch_app"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                core(tensors[i])
            times["torch_core"].append(time.perf_counter() - t0)
            for key, runner in runners.items():
                t0 = time.perf_counter()
                scores[key].append(runner.score(tensors[i])[0][0])
                times[key].append(time.perf_counter() - t0)
    app_scores = np.asarray(app)
    kept_labels = labels[keep]
    threshold = (f1_optimal(app_scores, kept_labels).value if len(set(kept_labels)) == 2
                 else None)
    row["threshold"] = threshold
    row.update({f"{k}_ms": _median_ms(v) for k, v in times.items()})
    names = [tests[i].path.name for i in keep]
    for key, got in scores.items():
        if threshold is not None:
            report = compare(names, app_scores, got,
                             threshold_normalizer(threshold, app_scores[kept_labels == 0]))
            row[f"{key}_parity"] = float(f"{report.max_abs_diff:.3g}")
        rel = np.abs(np.asarray(got) - app_scores) / np.abs(app_scores)
        row[f"{key}_raw_rel"] = float(f"{rel.max():.3g}")
    import openvino

    row["openvino"] = openvino.__version__
    row["peak_rss_mb"] = round(peak_rss_mb())
    line = json.dumps(row)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    return row


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
