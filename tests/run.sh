#!/usr/bin/env bash
# The test command: installs what the suite needs (Python packages, Debian's Chromium,
# PostgreSQL and Redis), starts PostgreSQL and Redis on localhost, then runs pytest.
# Idempotent; extra arguments go to pytest (e.g. `bash tests/run.sh tests/engine -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

python3 -m pip install -q -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq chromium >/dev/null
fi
KENSA_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"
export KENSA_TEST_POSTGRES_URL KENSA_REQUIRE_POSTGRES=1
# Redis for the job-queue tests (two workers sharing one queue); a missing one fails them.
KENSA_TEST_REDIS_URL="$(bash .ci/redis.sh)"
export KENSA_TEST_REDIS_URL KENSA_REQUIRE_REDIS=1
# Two test processes (pytest-xdist; at most 4 on bigger machines): the browser walks and the
# worker tests spend much of their time waiting on a server or a subprocess, so a second
# process uses the other core meanwhile (2 cores: 10 minutes instead of 18). Every test
# already has its own KENSA_HOME, database, queue name and port. `-n 0` runs in one process.
# pytest-benchmark (an anomalib dependency) is unused and would warn about xdist.
exec python3 -m pytest -q -p no:benchmark --numprocesses=auto --maxprocesses=4 \
  --dist=worksteal --durations=25 "$@"
