"""A second (and third) real process for the concurrency tests: ``python -m tests.db.proc``.

Each child signals it is ready, waits for the go-file so all start together, does its work in
many small transactions and prints a JSON line with its timings. Any exception exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import db.repositories as repo
from db.migrate import upgrade
from db.session import make_engine, session_scope


def _wait_for(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("peers did not arrive")
        time.sleep(0.002)


def write(
    url: str, batch_id: int, model_version_id: int, bank_id: int, n: int, started: Callable
) -> dict:
    """Per transaction: read what is scored, then insert one prediction and move progress.

    Read-then-write is the pattern that fails with "database is locked" under SQLite's
    deferred BEGIN; both processes also update the same model_versions row. After its first
    commit a child waits for its peers' first commits, so the runs overlap by construction
    (on a loaded machine one child could otherwise finish before the other starts).
    """
    engine = make_engine(url)
    first_commit = None
    for i in range(n):
        if i == 1:
            started()
        sha = f"{batch_id:08d}{i:056d}"
        with session_scope(engine) as s:
            if sha not in repo.scored_shas(s, batch_id):
                row = {
                    "image_sha256": sha,
                    "image_path": f"{batch_id}/{i}.png",
                    "state_version_id": bank_id,
                    "raw_score": float(i),
                    "verdict": "good",
                }
                repo.add_predictions(s, batch_id, [row])
            repo.update_progress(s, model_version_id, i / n, stage=f"batch {batch_id}")
        first_commit = first_commit or time.time()
    engine.dispose()
    return {"first_commit": first_commit, "last_commit": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["write", "upgrade"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--model-version", type=int)
    parser.add_argument("--bank", type=int)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()
    Path(args.ready).touch()
    _wait_for(Path(args.go).exists)
    flags = Path(args.go).parent

    def started() -> None:
        (flags / f"started-{os.getpid()}").touch()
        _wait_for(lambda: len(list(flags.glob("started-*"))) >= args.peers)

    if args.command == "upgrade":
        start = time.time()
        upgrade(args.url)
        result = {"first_commit": start, "last_commit": time.time()}
    else:
        result = write(args.url, args.batch, args.model_version, args.bank, args.n, started)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
