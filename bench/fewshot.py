"""Few-shot accuracy and speed: Kensa's default detector against stock anomalib PatchCore.

    python bench/fewshot.py --data DIR --shots 1,4,16 --seeds 0,1,2 [--baseline anomalib]
                            [--json FILE] [--set image_size=384 ...]
                            [--preset FILE [--copies 2] [--only-preset]]
                            [--before key=value ...]

For every (shots, seed) the seed picks that many ``train/good`` images (the same ones for both
methods); each method is fitted and tested on the whole test split in a fresh subprocess so that
``peak_rss_mb`` is its own. One JSON row per run is printed; ``--json`` writes the list.

``--preset FILE`` (an augmentation preset: the Kensa JSON of ``engine.augment`` or a saved
preset's ``{"kensa": ...}``) adds the method ``kensa_preset``: the same shots plus ``--copies``
augmented copies of each, made by ``engine.augment.augmented_copies`` exactly as a project
training with that preset marked does (copies flagged so the flip/rotation rule counts shots).

``--before key=value`` (repeatable) adds the method ``kensa_before``: Kensa with those overrides,
e.g. the previous defaults (``--before colour=rgb``), so that a change of defaults is measured
against what it replaces in the same run, on the same shots and the same machine load.

``--held-out-goods N`` gives Kensa's fits N more seeded ``train/good`` images (never the shots)
as ``colour_evidence``, as a project training does with its held-out goods: they only inform
the colour decision and never enter the bank. Rows say ``held_out_goods``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, peak_rss_mb  # noqa: E402


def choose_shots(paths: list[Path], shots: int, seed: int) -> list[Path]:
    """Seeded choice of ``shots`` training images, identical for every method."""
    import numpy as np

    ordered = sorted(paths)
    if shots > len(ordered):
        raise SystemExit(f"--shots {shots} but only {len(ordered)} good training images")
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=shots, replace=False))]


def held_out_goods(paths: list[Path], shots: list[Path], n: int, seed: int) -> list[Path]:
    """``n`` seeded good images that are not among ``shots`` (a project's held-out goods)."""
    import numpy as np

    rest = sorted(set(paths) - set(shots))
    if n > len(rest):
        raise SystemExit(f"--held-out-goods {n} but only {len(rest)} good images beside the shots")
    rng = np.random.default_rng(10_000 + seed)
    return [rest[i] for i in sorted(rng.choice(len(rest), size=n, replace=False))]


def stratified_tests(index, goods: int, per_type: int, seed: int = 123) -> list:
    """A fixed-seed subset of the test split: up to ``goods`` good images and ``per_type`` of
    each defect type, so every type keeps its voice and a 582-image split costs 180 scorings.

    The same subset for every method, shot count and preset of a run (its own seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = {"good": list(index.select(split="test", label="good"))}
    for record in index.select(split="test", label="defect"):
        groups.setdefault(record.defect_type or "defect", []).append(record)
    out = []
    for name, records in groups.items():
        records = sorted(records, key=lambda r: str(r.path))
        n = min(len(records), goods if name == "good" else per_type)
        out += [records[i] for i in sorted(rng.choice(len(records), n, replace=False))]
    return out


def parse_overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def run_worker(args: argparse.Namespace) -> dict[str, object]:
    """Fit and evaluate one method once; runs inside its own subprocess."""
    import numpy as np
    import torch

    from engine.backbones import build_classifier
    from engine.data import discover, load_image, load_mask
    from engine.metrics import image_metrics, pixel_metrics

    data = Path(args.data)
    index = discover(data, validate=False)
    goods = [r.path for r in index.select(split="train", label="good")]
    train = choose_shots(goods, args.shots, args.seed)
    evidence = held_out_goods(goods, train, args.held_out_goods, args.seed)
    tests = (stratified_tests(index, *args.subset) if args.subset
             else index.select(split="test"))
    overrides = parse_overrides(args.set or [])
    if args.method in ("kensa", "kensa_preset", "kensa_before"):
        from engine.models.fewshot import FewShotConfig, FewShotPatchCore

        if args.exact_coreset:  # the single exact greedy pass (before issue 9), for comparison
            import functools

            import engine.models.fewshot as fewshot
            from engine.coreset import GreedyCoresetSampler

            fewshot.GreedyCoresetSampler = functools.partial(  # type: ignore[misc]
                GreedyCoresetSampler, candidate_factor=None)

        model = FewShotPatchCore(FewShotConfig(seed=args.seed, **overrides))
        kensa = True
        backbone = model.config.backbone
    else:
        from engine.models.anomalib_patchcore import AnomalibPatchCore

        model = AnomalibPatchCore(**overrides)
        kensa = False
        backbone = "efficientnet_lite0"

    shots = [load_image(p) for p in train]
    extra = {"colour_evidence": [load_image(p) for p in evidence]} if kensa and evidence else {}
    if args.method == "kensa_preset":
        from engine.augment import augmented_copies, validate_config
        from engine.models.base import ImageSource

        raw = json.loads(Path(args.preset).read_text())
        config = validate_config(raw.get("kensa", raw))
        copies = augmented_copies(shots, config, args.copies)
        sources = ([ImageSource(str(p), "") for p in train]
                   + [ImageSource(f"copy{i}", "", augmented=True) for i in range(len(copies))])
        fit = model.fit(shots + copies, sources=sources, **extra)
    else:
        fit = model.fit(shots, **extra)
    labels, scores, maps, masks = [], [], [], []
    score_s = 0.0
    backbone_s = 0.0
    classifier = build_classifier(backbone)
    for record in tests:
        image = load_image(record.path)
        started = time.perf_counter()
        result = model.score([image])
        score_s += time.perf_counter() - started
        # the size each model works at (Kensa's scale rule, anomalib's own transform)
        tensor = model.working_tensor(image) if kensa else model._prepare(image).cpu()
        started = time.perf_counter()
        with torch.inference_mode():
            classifier(tensor)
        backbone_s += time.perf_counter() - started
        labels.append(int(record.label == "defect"))
        scores.append(float(result.scores[0]))
        maps.append(result.maps[0])
        mask = load_mask(record.mask_path, image.shape[:2]) if record.mask_path else None
        masks.append(mask)
    image_m = image_metrics(np.asarray(scores), np.asarray(labels))
    # Defect images without a mask would count their defect as background: leave them out.
    usable = [i for i, lab in enumerate(labels) if lab == 0 or masks[i] is not None]
    pixel_m = pixel_metrics([maps[i] for i in usable], [masks[i] for i in usable])
    return {
        "method": args.method,
        "category": data.name,
        "shots": args.shots,
        "seed": args.seed,
        "image_auroc": round(float(image_m["image_auroc"]), 4),
        "pixel_auroc": round(float(pixel_m["pixel_auroc"]), 4),
        "aupro": round(float(pixel_m["aupro"]), 4),
        "image_f1": round(float(image_m["image_f1"]), 4),
        "fit_s": round(fit.fit_seconds, 2),
        "ms_per_image": round(1000 * score_s / len(tests), 2),
        "backbone_ms_per_image": round(1000 * backbone_s / len(tests), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **({"heap_trims": model.heap.trims} if kensa else {}),
        "bank_size": fit.bank_size,
        "n_test": len(tests),
        **({"subset": args.subset} if args.subset else {}),
        **({"held_out_goods": args.held_out_goods} if extra else {}),
        "overrides": overrides,
        "coreset": "exact" if args.exact_coreset else "bounded",
        **({"preset": Path(args.preset).name, "copies": args.copies}
           if args.method == "kensa_preset" else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", required=True, help="dataset folder in MVTec layout")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--baseline", choices=["anomalib"], default=None)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--set", action="append", help="Kensa config override key=value")
    parser.add_argument("--exact-coreset", action="store_true",
                        help="exact single-pass greedy coreset (before the bounded sampler)")
    parser.add_argument("--preset", default=None,
                        help="augmentation preset JSON: also run kensa with augmented copies")
    parser.add_argument("--copies", type=int, default=2,
                        help="augmented copies per shot with --preset (default 2)")
    parser.add_argument("--only-preset", action="store_true",
                        help="with --preset, run only kensa_preset (plain rows from another run)")
    parser.add_argument("--subset", type=int, nargs=2, metavar=("GOODS", "PER_TYPE"),
                        help="score a fixed stratified test subset (e.g. 60 24) instead of all")
    parser.add_argument("--held-out-goods", type=int, default=0, metavar="N",
                        help="N more good images (not shots) for Kensa's colour decision")
    parser.add_argument("--before", action="append", default=[],
                        help="also run kensa_before: Kensa with this override (key=value)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="kensa", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.shots = int(args.shots)
        print(json.dumps(run_worker(args)))
        return 0
    methods = (([] if args.only_preset else ["kensa"]) + (["kensa_before"] if args.before else [])
               + ([args.baseline] if args.baseline else []))
    if args.preset:
        methods.append("kensa_preset")
    rows: list[dict[str, object]] = []
    for shots in [int(s) for s in args.shots.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in methods:
                cmd = [sys.executable, str(ROOT / "bench" / "fewshot.py"), "--worker",
                       "--data", args.data, "--shots", str(shots), "--seed", str(seed),
                       "--method", method]
                items = (args.before if method == "kensa_before"
                         else (args.set or []) if method.startswith("kensa") else [])
                for item in items:
                    cmd += ["--set", item]
                if method == "kensa_preset":
                    cmd += ["--preset", str(Path(args.preset).resolve()),
                            "--copies", str(args.copies)]
                if args.subset:
                    cmd += ["--subset", *map(str, args.subset)]
                if args.exact_coreset and method.startswith("kensa"):
                    cmd.append("--exact-coreset")
                if args.held_out_goods:
                    cmd += ["--held-out-goods", str(args.held_out_goods)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return done.returncode
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(rows, indent=2))
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            k: round(sum(float(r[k]) for r in mine) / len(mine), 4)
            for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "ms_per_image",
                      "backbone_ms_per_image", "peak_rss_mb")
        }
    print(json.dumps({"mean": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
