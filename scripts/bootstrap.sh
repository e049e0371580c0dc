#!/usr/bin/env bash
# Installs what mailcrm needs on a fresh Debian machine: Python with venv (Debian packages), then
# mailcrm itself into ./.venv. With "test": also the test tools, Dovecot and Postfix (their own
# daemons kept from starting), Chromium and docker-compose (scripts/install-browser.sh), and a
# PostgreSQL server if none answers on 127.0.0.1:5432.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=${1:-}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} = 0 ] && return 0
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3 python3-venv python3-pip
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ "$want_tests" = test ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 \
  | grep -v "^WARNING: Location" || true

if [ "$want_tests" = test ]; then
  bash scripts/install-servers.sh
  bash scripts/install-browser.sh
  bash scripts/postgres.sh
fi
