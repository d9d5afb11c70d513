"""Model zoo comparison on a data folder: the Training page's "Compare models", without a project.

    python bench/zoo.py --data DIR [--shots 16] [--seed 0] [--models NAME ...]
                        [--subset N_GOOD N_DEFECT] [--timeout S] [--include-network]
                        [--json FILE]

The same comparison as the ``compare_models`` job (``services.training.compare``): the shots are
the ones a training with ``--shots``/``--seed`` would pick (``fit.split_records``), every other
labelled image is held out (at most ``fit.MAX_VALIDATION``, a seeded stratified sample beyond),
and each model is fitted and scored in its own fresh child process, so ``peak_rss_mb`` is that
model's own (the child's ``VmHWM``) and one crash is one row with ``error``. ``--subset`` keeps
a seeded sample of that many held-out good and defect images (large folders).

Models: ``--models`` names registry models; by default every registered model that works
offline. Each runs with its registry defaults, as on the page. One JSON row per model is
printed as it finishes (progress goes to stderr); then the pick and its reason. ``--json``
writes the whole result (rows, the table's prior with its reasons, pick, reason, arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT  # noqa: E402

#: The columns of a printed row (the README table's).
COLUMNS = ("model", "image_auroc", "pixel_auroc", "f1", "fit_s", "ms_per_image", "peak_rss_mb",
           "error")


def main(argv: list[str] | None = None) -> int:
    from engine.data import discover
    from services.training.compare import check_candidates, compare, make_plan

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder in MVTec layout")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=None,
                        help="registry names (default: every offline model)")
    parser.add_argument("--include-network", action="store_true",
                        help="with no --models: also the models that need network access")
    parser.add_argument("--subset", type=int, nargs=2, metavar=("N_GOOD", "N_DEFECT"),
                        help="score a seeded sample of this many held-out good and defect "
                             "images")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a model may take before it is stopped (an error row)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)

    candidates = check_candidates(args.models, args.include_network)
    index = discover(Path(args.data), validate=False)
    plan = make_plan(index, args.shots, args.seed,
                     limit=tuple(args.subset) if args.subset else None)
    held = plan["held_out"]
    print(f"{Path(args.data).name}: {len(plan['train'])} shots, {len(held)} held-out images "
          f"({sum(r['label'] == 'defect' for r in held)} defect), models: "
          f"{', '.join(candidates)}", file=sys.stderr, flush=True)
    last = [0.0]

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] > 10 or stage == "done":
            last[0] = now
            print(f"  {fraction:5.1%} {stage}", file=sys.stderr, flush=True)

    started = time.monotonic()
    result = compare(plan, candidates, n_good=len(plan["train"]), progress=progress,
                     timeout_s=args.timeout)
    for row in result["rows"]:
        print(json.dumps({k: row.get(k) for k in COLUMNS}), flush=True)
    print(json.dumps({"pick": result["pick"], "reason": result["reason"]}), flush=True)
    result.update({"dataset": Path(args.data).name, "subset": args.subset,
                   "wall_s": round(time.monotonic() - started, 1), "argv": sys.argv[1:]})
    if args.json_path:
        path = Path(args.json_path)
        if not path.is_absolute():
            path = ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
