"""Issue 10's scenario, end to end through the services, on generated 96 px images.

Lots 1-3 are normal parts; lots 4-6 are the same kind of parts under a lamp that moved
(:func:`tests.synthetic.lighting_shift`). The drift charts must alarm (EWMA or CUSUM) by lot 5
and false alarms (good parts called defect) must rise. A person then adds 5 shifted good images
to the bank (they score as defects, so the update needs the person's confirmation), and lot 7,
shifted too, must get fewer false alarms. A rollback to the first bank must give lot 1's images
exactly the raw scores stored when they were first scored.

The numbers are printed (``pytest -s``) so the issue's closing note can quote them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.context import Kensa
from services.history.versions import rollback, update_bank
from services.inference.batches import batch_predictions, score_batch
from services.monitoring import drift_overview
from services.training.project import train_project
from tests.synthetic import lighting_shift, texture, write_png

LOT = 8  # images per lot: enough for a median, small enough for a one-core minute
SHIFT = 1.5  # the lamp's hot spot: +150 % brightness at its centre
SIZES = {"n_train": 8, "n_test_good": 8, "n_defect": 3, "size": 96, "seed": 0}


def _lot(root: Path, name: str, seed: int, shifted: bool, n: int = LOT) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / name.replace(" ", "_")
    for i in range(n):
        image = texture(rng, 96)
        write_png(folder / f"part_{i:02d}.png", lighting_shift(image, SHIFT) if shifted else image)
    return folder


def _false_alarms(result: Any) -> int:
    return sum(p["verdict"] == "defect" for p in result.predictions)


def test_lighting_shift_alarm_adapt_and_roll_back(
    ctx: Kensa, make_project: Callable[..., Path], tmp_path: Path
) -> None:
    make_project("line", **SIZES)
    train_project(ctx, "line", shots=None, seed=0, params={"image_size": 96})
    lots = tmp_path / "lots"
    false_alarms: dict[str, int] = {}
    first_scores: dict[str, float] = {}
    for k in range(1, 7):
        name = f"lot {k}"
        result = score_batch(ctx, "line", _lot(lots, name, 100 + k, shifted=k >= 4), name)
        assert result.scored == LOT
        false_alarms[name] = _false_alarms(result)
        if k == 1:
            first_scores = {p["image_sha256"]: p["raw_score"] for p in result.predictions}

    overview = drift_overview(ctx, "line", embedding=False, store=False)
    median = overview.charts["median"]
    ewma_alarm = [z > u for z, u in zip(median.ewma, median.ewma_ucl, strict=True)]
    cusum_alarm = [c > median.cusum_h for c in median.cusum_pos]
    alarms = [e or c for e, c in zip(ewma_alarm, cusum_alarm, strict=True)]
    assert not any(alarms[:3]), f"normal lots must not alarm: {alarms}"
    first_alarm = alarms.index(True) + 1 if any(alarms) else None
    assert first_alarm is not None and first_alarm <= 5, f"no EWMA/CUSUM alarm by lot 5: {alarms}"
    verdicts = {lot.name: lot.verdict for lot in overview.lots}
    assert all(verdicts[f"lot {k}"] == "drift" for k in (4, 5, 6)), verdicts
    before = sum(false_alarms[f"lot {k}"] for k in (1, 2, 3))
    during = sum(false_alarms[f"lot {k}"] for k in (4, 5, 6))
    assert during > before, false_alarms

    # A person confirms 5 shifted parts are good: they go into the bank (bank version 2).
    goods = _lot(tmp_path / "confirmed", "shifted goods", 900, shifted=True, n=5)
    update = update_bank(ctx, "line", [goods], force_suspect=True,
                         note="5 parts under the moved lamp, confirmed good")
    assert (update["version"], update["kind"]) == (2, "incremental")
    lot7 = score_batch(ctx, "line", _lot(lots, "lot 7", 107, shifted=True), "lot 7")
    false_alarms["lot 7"] = _false_alarms(lot7)
    per_shifted_lot = max(false_alarms[f"lot {k}"] for k in (4, 5, 6))
    assert false_alarms["lot 7"] < per_shifted_lot, false_alarms

    # Roll back to the first bank: lot 1's images score exactly as they did the first time.
    back = rollback(ctx, "line", 1)
    assert back["kind"] == "rollback" and back["active"]
    again = score_batch(ctx, "line", lots / "lot_1", "lot 1 again")
    rescored = {p["image_sha256"]: p["raw_score"] for p in again.predictions}
    stored = {p["image_sha256"]: p["raw_score"] for p in batch_predictions(ctx, "line", "lot 1")}
    assert stored == first_scores
    assert rescored == first_scores  # exact, not approximate: same bank file, same rule

    numbers = {
        "lots": [{"lot": lot.name, "median": round(lot.median, 3),
                  "reject_rate": round(lot.reject_rate, 3), "verdict": lot.verdict}
                 for lot in overview.lots],
        "chart_center": round(median.center, 3), "chart_ucl": round(median.ucl, 3),
        "ewma_alarm": ewma_alarm, "cusum_alarm": cusum_alarm, "first_alarm_lot": first_alarm,
        "false_alarms": false_alarms, "lot_size": LOT,
        "threshold_before": overview.lots[0].threshold,
        "threshold_after_update": update["threshold"]["raw_value"],
        "bank_vectors": update["vector_count"],
        "rollback_identical_scores": len(rescored),
    }
    print("\nSCENARIO", json.dumps(numbers))
