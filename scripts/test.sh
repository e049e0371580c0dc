#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs the linters,
# the type checker and the whole test suite against real Dovecot, Postfix and PostgreSQL, with a
# coverage report of crm/, proxy/ and cli.py. MAILCRM_COVER_FLOOR=N fails the run below N percent
# (the floor CI holds; unset: report only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/mypy
cover=(--cov=crm --cov=proxy --cov=cli --cov-report=term)
# The floor: today's figure (93 % of crm/, proxy/ and cli.py, 2026-12-06) less one point;
# raise it as coverage grows. MAILCRM_COVER_FLOOR=0 turns it off (a partial run, say).
cover+=("--cov-fail-under=${MAILCRM_COVER_FLOOR:-92}")
exec .venv/bin/python -m pytest -q -p no:cacheprovider "${cover[@]}" "$@"
