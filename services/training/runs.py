"""File-based training runs (no database): a folder with the model, its bank and threshold.

``train --data DIR --out RUN_DIR`` writes ``run.json`` (what was trained on and how, with the
validation metrics), the model's own files (``model.json`` + ``bank.safetensors``) and
``threshold.json``; ``score --run RUN_DIR`` reads them back through the model registry, checking
the sha256 of every model file recorded in ``run.json``. Provenance records live in the model's
``model.json`` with ids from 0 (no database to allocate them).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.artifacts import write_json_atomic
from engine.models import AnomalyModel, registry
from services.inference.scoring import ThresholdInfo
from services.training.fit import TrainOutcome

RUN_FILE = "run.json"
THRESHOLD_FILE = "threshold.json"


def save_run(outcome: TrainOutcome, out_dir: Path, data: Path, shots: int | None,
             seed: int) -> dict[str, str]:
    """Write every artifact atomically; ``run.json`` last, so a complete run has it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = outcome.model.save(out_dir)
    model_files = dict(digests)
    threshold = {
        "method": outcome.threshold.method,
        "value": float(outcome.threshold.value),
        "params": outcome.threshold.params,
        "normal_scores": [float(s) for s in outcome.validation.normal_scores],
    }
    digests[THRESHOLD_FILE] = write_json_atomic(out_dir / THRESHOLD_FILE, threshold)
    run = {
        "algorithm": outcome.algorithm,
        "params": outcome.params,
        "data": str(Path(data).resolve()),
        "shots": shots,
        "seed": seed,
        "train_images": outcome.shots,
        "fit": outcome.fit._asdict(),
        "validation_images": len(outcome.validation.paths),
        "metrics": outcome.metrics,
        "skipped": outcome.skipped,
        "artifacts": dict(digests),
        "model_files": model_files,
    }
    digests[RUN_FILE] = write_json_atomic(out_dir / RUN_FILE, run)
    return digests


def load_run(run_dir: Path, device: str | None = None) -> tuple[AnomalyModel, ThresholdInfo]:
    """The run's model (files verified; runs saved before ``model_files`` check their bank
    against ``model.json`` only) and its threshold."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {RUN_FILE}); train one first")
    run = json.loads((run_dir / RUN_FILE).read_text())
    model = registry.load(run.get("algorithm", registry.DEFAULT_MODEL), run_dir,
                          files=run.get("model_files"), device=device)
    raw = json.loads((run_dir / THRESHOLD_FILE).read_text())
    return model, ThresholdInfo(float(raw["value"]), raw["method"],
                                tuple(float(s) for s in raw.get("normal_scores", ())))
