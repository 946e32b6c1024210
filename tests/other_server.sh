#!/usr/bin/env bash
# Run the integration tests against a second PostgreSQL major version (Debian's, e.g. 15),
# started here in a scratch directory and stopped afterwards. Usage: tests/other_server.sh [VERSION]
set -euo pipefail
version="${1:-15}"
bin="/usr/lib/postgresql/${version}/bin"
if [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL ${version} is not installed (${bin}); skipping the second-server run"
    exit 0
fi
cd "$(dirname "$0")/.."
scratch="$(mktemp -d /tmp/ingestd-pg${version}.XXXXXX)"
chmod 755 "$scratch"
user=postgres
id "$user" >/dev/null 2>&1 || user="$(id -un)"
as_user() { if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi; }
chown "$user" "$scratch"
as_user "$bin/initdb" -D "$scratch/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_user "$bin/pg_ctl" -D "$scratch/data" -w -l "$scratch/log" \
    -o "-k $scratch -c listen_addresses='' -c fsync=off" start >/dev/null
trap 'as_user "$bin/pg_ctl" -D "$scratch/data" -w -m fast stop >/dev/null || true; rm -rf "$scratch"' EXIT
export INGESTD_TEST_DSN="postgresql://postgres@/postgres?host=${scratch}"
.venv/bin/pytest -q -p no:cacheprovider --basetemp="$scratch/pytest" tests/integration -m "not slow"
