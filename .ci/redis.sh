#!/usr/bin/env bash
# Start a local Redis for the job-queue tests and print the URL to export.
# Idempotent: installs Debian's redis-server only when missing, reuses the server this script
# started before while it answers, else starts one (daemonized, no persistence) on a free port
# of 127.0.0.1. stdout carries ONLY the URL, so CI can do:
#   export KENSA_TEST_REDIS_URL="$(bash .ci/redis.sh)"
set -euo pipefail

log() { echo "redis.sh: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server (apt)"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi

state="${TMPDIR:-/tmp}/kensa-test-redis"
mkdir -p "$state"
if [ -f "$state/port" ]; then
  port=$(cat "$state/port")
  if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
    echo "redis://127.0.0.1:${port}/0"
    exit 0
  fi
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting redis-server on 127.0.0.1:$port"
redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --save "" --appendonly no \
  --dir "$state" --pidfile "$state/redis.pid" --logfile "$state/redis.log" >&2
for _ in $(seq 1 50); do
  redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG \
  || { log "redis on port $port is not answering (see $state/redis.log)"; exit 1; }
echo "$port" > "$state/port"
echo "redis://127.0.0.1:${port}/0"
