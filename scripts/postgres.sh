#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with a database "test" reachable as
# user postgres (the tests' MAILCRM_TEST_PG_URL). Starts an installed cluster that is down;
# installs Debian's postgresql only where there is none.
set -euo pipefail
url=${MAILCRM_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
if ! answers; then
  for version in $(ls /etc/postgresql); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 30); do answers && break; sleep 1; done
fi
answers || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
psql_url=${url/postgresql+psycopg:/postgresql:}
if ! psql "$psql_url" -qAtc 'select 1' >/dev/null 2>&1; then
  # A fresh Debian cluster: allow the loopback test connections without a password.
  hba=$(as_root su postgres -c "psql -qAtc 'show hba_file'")
  if ! as_root grep -q "mailcrm-tests" "$hba"; then
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust # mailcrm-tests' "$hba"
    as_root su postgres -c "psql -qAtc 'select pg_reload_conf()'" >/dev/null
  fi
  as_root su postgres -c "createdb test" 2>/dev/null || true
fi
psql "$psql_url" -qAtc 'select 1' >/dev/null
