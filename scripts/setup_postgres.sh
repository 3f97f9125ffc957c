#!/usr/bin/env bash
# Debian's PostgreSQL server binaries for the `postgres` tests (devtools/postgres_server.py starts a throwaway
# cluster in a temp folder, as the `postgres` user when run as root). Installs only when missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup_postgres: ready ($(ls -d /usr/lib/postgresql/*/bin | head -1))"
  exit 0
fi
echo "setup_postgres: installing Debian's postgresql"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
# The package starts a system cluster on 5432; the tests never use it, so stop it where a service manager runs.
$SUDO pg_ctlcluster --force "$(ls /usr/lib/postgresql | sort -V | tail -1)" main stop 2>/dev/null || true
echo "setup_postgres: ready ($(ls -d /usr/lib/postgresql/*/bin | head -1))"
