#!/usr/bin/env bash
# postgresql: the real database server behind the CA's PostgreSQL ledger tests
# (several CA processes on one ledger). The tests start their own server in a
# temporary directory with initdb and pg_ctl (as the `postgres` user when run
# as root); nothing here starts a cluster.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
# Root runs the server as `postgres` (postgres refuses to run as root).
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "the postgresql package did not create the postgres user" >&2
    exit 1
fi
