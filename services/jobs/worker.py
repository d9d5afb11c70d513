"""Background work in its own process, so a page never blocks and a reload loses nothing.

    python -m services.jobs.worker train MODEL_VERSION_ID
    python -m services.jobs.worker update-bank PROJECT PATH [PATH ...] [--note TEXT]

``KENSA_HOME`` and ``DATABASE_URL`` come from the environment (``Kensa.env()`` sets them).
Exit status: 0 done, 3 cancelled, 1 failed (the model version row holds the error text).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback
from pathlib import Path

from services.context import Kensa
from services.training.fit import TrainingCancelled

REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn(ctx: Kensa, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m services.jobs.worker ARGV`` detached; returns at once.

    ``start_new_session`` keeps the worker alive when the Streamlit script reruns or the
    browser reloads (and lets a caller signal its whole process group); its output is
    appended to ``log_path``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = ctx.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.jobs.worker", *argv], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log(stage: str, fraction: float) -> None:
    print(f"{fraction:6.1%}  {stage}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.jobs.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a queued training")
    train.add_argument("model_version_id", type=int)
    update = sub.add_parser("update-bank", help="add good images to the active bank")
    update.add_argument("project")
    update.add_argument("paths", nargs="+")
    update.add_argument("--note")
    args = parser.parse_args(argv)

    ctx = Kensa.create()
    try:
        if args.command == "train":
            from services.training.project import run_training

            result = run_training(ctx, args.model_version_id, progress=_log)
            print(f"model version {result['id']}: {result['status']}", flush=True)
        else:
            from services.history.versions import update_bank

            bank = update_bank(ctx, args.project, args.paths, note=args.note, progress=_log)
            print(f"bank v{bank['version']} active ({bank['vector_count']} vectors)", flush=True)
        return 0
    except TrainingCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 3
    except Exception:  # noqa: BLE001 - a worker's log is where the traceback is read
        traceback.print_exc()
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":
    raise SystemExit(main())
