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
from engine.models.base import MODEL_FILE, read_verified
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
    """The run's model and threshold, every file checked against the sha256 ``run.json`` keeps.

    An edited ``model.json`` once changed the same image's score from 27.11 to 49.50, and an
    edited ``threshold.json`` would change every verdict: both are refused with the two
    digests. Runs saved before ``model_files`` existed verify their model files against the
    ``artifacts`` list, which has always held them.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a training run (no {RUN_FILE}); train one first")
    try:
        run = json.loads((run_dir / RUN_FILE).read_text())
    except ValueError as exc:
        raise ValueError(f"{run_dir / RUN_FILE} is not valid JSON ({exc})") from None
    artifacts = dict(run.get("artifacts") or {})
    files = run.get("model_files") or {
        name: digest for name, digest in artifacts.items()
        if name not in (RUN_FILE, THRESHOLD_FILE)
    }
    if MODEL_FILE not in files:
        raise ValueError(f"{run_dir / RUN_FILE} records no sha256 for {MODEL_FILE}; "
                         "train the run again")
    model = registry.load(run.get("algorithm", registry.DEFAULT_MODEL), run_dir,
                          files=files, device=device)
    data = read_verified(run_dir, THRESHOLD_FILE, {THRESHOLD_FILE: artifacts[THRESHOLD_FILE]}
                         if THRESHOLD_FILE in artifacts else None)
    raw = json.loads(data)
    return model, ThresholdInfo(float(raw["value"]), raw["method"],
                                tuple(float(s) for s in raw.get("normal_scores", ())))
