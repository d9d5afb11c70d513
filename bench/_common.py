"""Helpers shared by the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def workbench_page(home: Path, timeout_ms: int = 180_000) -> Iterator[tuple[str, Any]]:
    """``streamlit run app.py`` on ``home`` and a headless Chromium page: ``(url, page)``.

    For the acceptance-screenshot scripts; the server, its local job worker and the browser
    are stopped on the way out (the e2e tests' own helpers do the work).
    """
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, _start, _stop, _wait_healthy

    log = home / "streamlit.log"
    url, proc = _start(home, log)
    try:
        _wait_healthy(url, proc, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(timeout_ms)
                yield url, page
            finally:
                browser.close()
    finally:
        _stop(proc)
