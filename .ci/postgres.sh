#!/usr/bin/env bash
# Start a local PostgreSQL for the db tests and print the URL to export.
# Idempotent: installs Debian's postgresql only when missing, starts the cluster only when down,
# (re)creates the `kensa` role. stdout carries ONLY the URL, so CI can do:
#   export KENSA_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
  as_postgres() { runuser -u postgres -- "$@"; }
else
  as_root() { sudo "$@"; }
  as_postgres() { sudo -u postgres "$@"; }
fi

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  log "installing postgresql (apt)"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

# The newest installed server version; its cluster is created if the package did not make one.
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters --no-header | awk '{print $1}' | grep -qx "$version"; then
  log "creating cluster $version/main"
  as_root pg_createcluster "$version" main >&2
fi
read -r _ cluster port status _ < <(pg_lsclusters --no-header | awk -v v="$version" '$1 == v' | head -n 1)

if [[ "$status" != online* ]]; then
  log "starting cluster $version/$cluster on port $port"
  as_root pg_ctlcluster "$version" "$cluster" start >&2
fi
for _ in $(seq 1 30); do
  pg_isready -q -h localhost -p "$port" && break
  sleep 1
done
pg_isready -q -h localhost -p "$port" || { log "server on port $port is not ready"; exit 1; }

# Role with CREATEDB: the tests create and drop one throwaway database per test.
as_postgres psql -q -p "$port" -v ON_ERROR_STOP=1 >&2 <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kensa') THEN
    CREATE ROLE kensa LOGIN CREATEDB PASSWORD 'kensa';
  ELSE
    ALTER ROLE kensa LOGIN CREATEDB PASSWORD 'kensa';
  END IF;
END
$$;
SQL

echo "postgresql+psycopg://kensa:kensa@localhost:${port}/postgres"
