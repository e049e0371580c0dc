#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs the linters,
# the type checker and the whole test suite against real Dovecot, Postfix and PostgreSQL, with a
# coverage report of crm/, proxy/ and cli.py. MAILCRM_COVER_FLOOR=N fails the run below N percent
# (the floor CI holds; unset: report only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Coverage (crm/, proxy/, cli.py; 93 % on 2026-12-06) with MAILCRM_COVER=1: it slows the suite by
# half, and the poller's timing tests then fail under load; floor MAILCRM_COVER_FLOOR (default 92).
cover=()
if [ "${MAILCRM_COVER:-}" = 1 ]; then
  cover=(--cov=crm --cov=proxy --cov=cli --cov-report=term "--cov-fail-under=${MAILCRM_COVER_FLOOR:-92}")
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${cover[@]}" "$@"
