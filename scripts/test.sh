#!/usr/bin/env bash
# The test command of the README and of CI: installs what the tests need, then runs the linters,
# the type checker and the whole test suite against real Dovecot, Postfix and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
