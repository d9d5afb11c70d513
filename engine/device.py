"""Device choice in one place, so every module agrees on where tensors live; and the one place
that sets process-wide torch settings, for worker processes only."""

from __future__ import annotations

import os

import torch

#: Environment variable that fixes a worker's torch CPU threads (else half the cores, at least 1).
THREADS_ENV = "KENSA_TORCH_THREADS"


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present, CPU otherwise; an explicit ``preferred`` wins when it is usable."""
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preferred!r} was requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def worker_threads(cpu_count: int | None = None) -> int:
    """Torch CPU threads for one worker: ``KENSA_TORCH_THREADS``, else half the cores (>= 1).

    Half, because the app and other workers share the machine: on the 2-core dev box one
    thread trains the demo in ~9 s and two threads in ~18 s, the greedy coreset loop waiting on
    an OpenMP barrier at every one of its thousands of tiny steps as soon as another process
    competes for the cores (see bench/coreset.py).
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        threads = int(value)
        if threads < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
        return threads
    return max(1, (cpu_count if cpu_count is not None else os.cpu_count() or 1) // 2)


def configure_worker_process(threads: int | None = None) -> int:
    """Set the process-wide torch settings of a worker (or CLI) process; returns the threads.

    Call it once, first thing, in a process that trains or scores (services/jobs/worker.py,
    services/cli.py, bench scripts). Never from code the Streamlit server runs: these settings
    are shared by every thread of a process, so a page changing them would change them for
    every other user's run in the same server.
    """
    threads = threads if threads is not None else worker_threads()
    torch.set_num_threads(threads)
    return threads
