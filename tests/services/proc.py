"""A second real process for the service concurrency test: ``python -m tests.services.proc``.

Loads the project's active model, says it is ready, waits for the go-file so both children
score at the same moment, scores a folder into a batch and prints a JSON line. Any exception
exits non-zero with its traceback on stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from services.context import Kensa
from services.inference.batches import get_active_model, load_model, score_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("path")
    parser.add_argument("batch")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--chunk", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = Kensa.create()  # both children upgrade at once: must be harmless
    model = load_model(get_active_model(ctx, args.project))
    Path(args.ready).touch()
    deadline = time.monotonic() + 120
    while not Path(args.go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.005)
    result = score_batch(ctx, args.project, args.path, args.batch, model=model,
                         chunk=args.chunk)
    ctx.close()
    print(json.dumps({"scored": result.scored, "problems": result.problems}))


if __name__ == "__main__":
    main()
