"""Lighting shift: feature normalization and style alignment against a changed lamp (issue 14).

    python bench/domain_shift.py [--data DIR ...] [--shots 4,16] [--seeds 0,1]
                                 [--subset 30 12] [--json bench/results/domain_shift.json]

The shots are unchanged ``train/good`` images (``bench.fewshot.choose_shots``). The test set
is built in memory from the test split twice: as it is (the control) and with one seeded
lighting change per image (the shift): an illumination gradient or vignette, a colour
temperature, a brightness/contrast change and a gamma, all at one of three severities that
cycle over the images. Images of a grey camera (every channel equal) are turned back to grey
after the change: a monochrome camera sees a colour cast only as a brightness change.

Every option of ``OPTIONS`` is fitted once per (data set, shots, seed) and scores both sets;
then the two options best under shift (mean shifted image AUROC over the data sets) run again
with ``match_intensity`` off, the input-level matching that is on by default, to show what
each adds to it. One JSON row per run is printed as it finishes (stderr), then one JSON object
with the rows, the means over seeds and the default decision (stdout, and ``--json``).
Magnetic tile is scored on the fixed stratified subset of ``bench/fewshot.py --subset`` to
keep the whole run under 25 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, peak_rss_mb  # noqa: E402
from bench.fewshot import choose_shots, stratified_tests  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
DEFAULT_DATA = (DATA / "toothbrush", DATA / "magnetic_tile")
#: model options compared (FewShotConfig overrides on top of the defaults)
OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "instance": {"normalization": "instance"},
    "layer": {"normalization": "layer"},
    "batch": {"normalization": "batch"},
    "style_align": {"style_align": True},
    "batch+style_align": {"normalization": "batch", "style_align": True},
}
#: the shift's seed: the same changed images for every option, shot count and seed
SHIFT_SEED = 14
SEVERITIES = (1, 2, 3)
#: a control may lose this much mean image AUROC for an option to become a default
CONTROL_TOLERANCE = 0.005
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class TestSet:
    """One data set's test images in memory, unchanged and shifted, with labels and masks."""

    name: str
    control: list[Any]
    shifted: list[Any]
    labels: list[int]
    masks: list[Any]
    severities: list[int]
    shots_from: list[Path]
    #: (goods, per defect type) when the test split was subset, else None
    subset: tuple[int, int] | None
    #: images in the whole test split
    n_split: int


def _colour_temperature(image: Any, kelvin: int, **_: Any) -> Any:
    """albumentations' Planckian (black-body) colour cast at exactly ``kelvin``."""
    from albumentations.augmentations.pixel.functional import planckian_jitter

    return planckian_jitter(image, kelvin, mode="blackbody")


def lighting_change(rng: Any, severity: int) -> tuple[Any, dict[str, Any]]:
    """A fixed albumentations pipeline drawn from ``rng`` at ``severity`` 1..3, and its terms.

    Parameters are drawn here, each transform then gets a one-point range (``p=1``): the
    change is one exact, describable change per image, as in ``engine.augment.stress``.
    Physical order: the lamp (gradient or vignette, colour temperature), then the camera
    (exposure: brightness/contrast, then its tone curve: gamma).
    """
    import albumentations as A

    s = severity / len(SEVERITIES)
    sign = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    mode = str(rng.choice(["linear", "corner", "gaussian"]))
    light = 0.2 * s  # albumentations allows 0.2 at most
    effect = str(rng.choice(["brighten", "darken"]))
    angle = float(rng.uniform(0, 360))
    warm = bool(rng.random() < 0.5)
    kelvin = int(round(6500 - 3000 * s)) if warm else int(round(6500 + 6000 * s))
    brightness = sign() * 0.25 * s
    contrast = sign() * 0.3 * s
    gamma = 100.0 * (1 + 0.6 * s) ** sign()
    steps = [
        A.Illumination(mode=mode, intensity_range=(light, light), effect_type=effect,
                       angle_range=(angle, angle), center_range=(0.2, 0.8),
                       sigma_range=(0.4, 0.4), p=1.0),
        # PlanckianJitter itself only draws (its range must hold 6000 K): its function, fixed
        A.Lambda(image=partial(_colour_temperature, kelvin=kelvin), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=(brightness, brightness),
                                   contrast_limit=(contrast, contrast), p=1.0),
        A.RandomGamma(gamma_limit=(gamma, gamma), p=1.0),
    ]
    terms = {"severity": severity, "illumination": f"{mode}/{effect}/{light:.2f}",
             "kelvin": kelvin, "brightness": round(brightness, 3),
             "contrast": round(contrast, 3), "gamma": round(gamma / 100, 3)}
    return A.Compose(steps, seed=int(rng.integers(2**31))), terms


def shift_images(images: Sequence[Any], seed: int = SHIFT_SEED
                 ) -> tuple[list[Any], list[int], list[dict[str, Any]]]:
    """One seeded lighting change per image; severities cycle over a seeded order."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    severity = [0] * len(images)
    for rank, i in enumerate(order):
        severity[int(i)] = SEVERITIES[rank % len(SEVERITIES)]
    out, terms = [], []
    for i, image in enumerate(images):
        transform, described = lighting_change(np.random.default_rng([seed, i]), severity[i])
        changed = transform(image=image)["image"]
        if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1],
                                                                          image[..., 2]):
            gray = cv2.cvtColor(changed, cv2.COLOR_RGB2GRAY)
            changed = np.repeat(gray[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(changed))
        terms.append(described)
    return out, severity, terms


def load_test_set(data: Path, subset: tuple[int, int] | None) -> TestSet:
    """The test split (or its stratified subset) with masks, and its shifted copy."""
    from engine.data import discover, load_image, load_mask

    index = discover(data, validate=False)
    split = index.select(split="test")
    records = stratified_tests(index, *subset) if subset else split
    images, labels, masks = [], [], []
    for record in records:
        image = load_image(record.path)
        images.append(image)
        labels.append(int(record.label == "defect"))
        masks.append(load_mask(record.mask_path, image.shape[:2]) if record.mask_path else None)
    shifted, severities, _ = shift_images(images)
    train = [r.path for r in index.select(split="train", label="good")]
    return TestSet(data.name, images, shifted, labels, masks, severities, train, subset,
                   len(split))


def evaluate(scores: Sequence[float], maps: Sequence[Any], test: TestSet) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (defect images without a mask left out of the
    pixel metrics, as in ``bench/fewshot.py``)."""
    import numpy as np

    from engine.metrics import image_metrics, pixel_metrics

    image_m = image_metrics(np.asarray(scores), np.asarray(test.labels))
    usable = [i for i, lab in enumerate(test.labels) if lab == 0 or test.masks[i] is not None]
    pixel_m = pixel_metrics([maps[i] for i in usable], [test.masks[i] for i in usable])
    return {"image_auroc": round(float(image_m["image_auroc"]), 4),
            "pixel_auroc": round(float(pixel_m["pixel_auroc"]), 4),
            "aupro": round(float(pixel_m["aupro"]), 4)}


def run_one(test: TestSet, shots: list[Any], seed: int, option: str,
            overrides: dict[str, Any]) -> dict[str, Any]:
    """Fit one option on the shots; score control and shift; one row."""
    from engine.models.fewshot import FewShotConfig, FewShotPatchCore

    model = FewShotPatchCore(FewShotConfig(seed=seed, **overrides))
    fit = model.fit(shots)
    row: dict[str, Any] = {"dataset": test.name, "option": option, "shots": len(shots),
                           "seed": seed, "overrides": overrides,
                           "fit_s": round(fit.fit_seconds, 2)}
    started = time.perf_counter()
    for condition, images in (("control", test.control), ("shift", test.shifted)):
        scores, maps = [], []
        for image in images:  # one at a time: 1024-px maps add up
            result = model.score([image])
            scores.append(float(result.scores[0]))
            maps.append(result.maps[0])
        row[condition] = evaluate(scores, maps, test)
    row["ms_per_image"] = round(1000 * (time.perf_counter() - started)
                                / (2 * len(test.control)), 1)
    return row


def means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """option -> dataset -> shots ("all" too) -> condition -> metric, mean over seeds."""
    groups: dict[tuple[str, str, str, str], list[dict[str, float]]] = defaultdict(list)
    for row in rows:
        for condition in ("control", "shift"):
            for shots in (str(row["shots"]), "all"):
                groups[row["option"], row["dataset"], shots, condition].append(row[condition])
    out: dict[str, Any] = {}
    for (option, dataset, shots, condition), values in sorted(groups.items()):
        out.setdefault(option, {}).setdefault(dataset, {}).setdefault(shots, {})[condition] = {
            m: round(sum(v[m] for v in values) / len(values), 4) for m in METRICS}
    return out


def decide(summary: dict[str, Any], datasets: list[str], candidates: list[str]
           ) -> dict[str, Any]:
    """Which options may be on by default: better than ``none`` under shift on EVERY data set
    (mean image AUROC over shots and seeds) and no control more than ``CONTROL_TOLERANCE``
    below ``none``'s. The best such option wins; none qualifying keeps the defaults."""
    base = summary["none"]
    verdicts: dict[str, Any] = {}
    for option in candidates:
        if option == "none" or option not in summary:
            continue
        gains = {d: round(summary[option][d]["all"]["shift"]["image_auroc"]
                          - base[d]["all"]["shift"]["image_auroc"], 4) for d in datasets}
        costs = {d: round(summary[option][d]["all"]["control"]["image_auroc"]
                          - base[d]["all"]["control"]["image_auroc"], 4) for d in datasets}
        ok = all(g > 0 for g in gains.values()) and all(c >= -CONTROL_TOLERANCE
                                                         for c in costs.values())
        verdicts[option] = {"shift_gain": gains, "control_change": costs, "qualifies": ok}
    qualified = [o for o, v in verdicts.items() if v["qualifies"]]
    best = max(qualified, key=lambda o: sum(verdicts[o]["shift_gain"].values()), default=None)
    return {"rule": f"image AUROC under shift above 'none' on every data set, control at most "
                    f"{CONTROL_TOLERANCE} below", "verdicts": verdicts, "default": best or "none"}


def rank_under_shift(summary: dict[str, Any], datasets: list[str], options: list[str]
                     ) -> list[str]:
    """Options by mean shifted image AUROC over the data sets, best first."""
    def key(option: str) -> float:
        return sum(summary[option][d]["all"]["shift"]["image_auroc"] for d in datasets)
    return sorted(options, key=key, reverse=True)


def run_all(tests: list[TestSet], shot_counts: list[int], seeds: list[int],
            options: dict[str, dict[str, Any]], log: Callable[[dict[str, Any]], None]
            ) -> list[dict[str, Any]]:
    """Every (data set, shots, seed, option); shots are loaded once per (data set, k, seed)."""
    from engine.data import load_image

    rows = []
    for test in tests:
        for k in shot_counts:
            for seed in seeds:
                shots = [load_image(p) for p in choose_shots(test.shots_from, k, seed)]
                for option, overrides in options.items():
                    row = run_one(test, shots, seed, option, overrides)
                    rows.append(row)
                    log(row)
    return rows


def table(summary: dict[str, Any], datasets: list[str]) -> list[str]:
    """Compact lines: option, then per data set control and shift (image/pixel/AUPRO)."""
    lines = []
    for option, per in summary.items():
        cells = []
        for d in datasets:
            for condition in ("control", "shift"):
                m = per[d]["all"][condition]
                cells.append(f"{d[:5]} {condition[:5]} "
                             + "/".join(f"{m[k]:.3f}" for k in METRICS))
        lines.append(f"{option:28s} " + " | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", default=None,
                        help="MVTec-layout data set (repeatable; default: both shared ones)")
    parser.add_argument("--shots", default="4,16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--subset", type=int, nargs=2, default=(30, 12),
                        metavar=("GOODS", "PER_TYPE"),
                        help="stratified test subset for data sets with defect types "
                             "(default 30 12; 0 0: the whole split)")
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help="comma-separated names from OPTIONS")
    parser.add_argument("--no-intensity-pass", action="store_true",
                        help="skip the match_intensity=False runs of the two best options")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on the shared 2-core box two threads "
                             "waiting at OpenMP barriers measured 5-10x slower per image)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    paths = [Path(d) for d in (args.data or DEFAULT_DATA)]
    subset = (int(args.subset[0]), int(args.subset[1])) if all(args.subset) else None
    tests = []
    for path in paths:  # a subset only where there are defect types to stratify
        types = {p.name for p in (path / "test").iterdir() if p.is_dir()} - {"good"}
        tests.append(load_test_set(path, subset if len(types) > 1 else None))
    datasets = [t.name for t in tests]
    shot_counts = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = {name: OPTIONS[name] for name in args.options.split(",")}

    def log(row: dict[str, Any]) -> None:
        print(json.dumps(row), file=sys.stderr, flush=True)

    rows = run_all(tests, shot_counts, seeds, chosen, log)
    summary = means(rows)
    best_two = rank_under_shift(summary, datasets, list(chosen))[:2]
    if not args.no_intensity_pass:
        off = {f"{name}, no match_intensity": {**chosen[name], "match_intensity": False}
               for name in best_two}
        rows += run_all(tests, shot_counts, seeds, off, log)
        summary = means(rows)
    result = {
        "bench": "domain_shift",
        "setup": {
            "data": {t.name: {"n_test": len(t.control), "n_split": t.n_split,
                              "n_defect": sum(t.labels),
                              "subset": None if t.subset is None else list(t.subset),
                              "severity_counts": {s: t.severities.count(s) for s in SEVERITIES}}
                     for t in tests},
            "shots": shot_counts, "seeds": seeds, "shift_seed": SHIFT_SEED,
            "shift": "per image: albumentations Illumination (linear/corner/gaussian, 0.07-0.2), "
                     "PlanckianJitter blackbody (3500-12500 K), RandomBrightnessContrast "
                     "(+-0.08-0.25 / +-0.1-0.3), RandomGamma (x1.2-1.6 or its inverse); "
                     "severity 1..3 cycling; grey images back to grey",
            "test_images": "n_test of n_split per data set, each scored unchanged (control) "
                           "and shifted; a data set with defect types is scored on the "
                           "stratified subset (bench/fewshot.py --subset) to keep the run "
                           "under 25 min on 2 cores",
            "torch_threads": torch.get_num_threads(),
        },
        "rows": rows,
        "mean_over_seeds": summary,
        "best_two_under_shift": best_two,
        "decision": decide(summary, datasets, list(summary)),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    for line in table(summary, datasets):
        print(line, file=sys.stderr)
    print(json.dumps(result))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
