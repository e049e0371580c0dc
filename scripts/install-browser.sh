#!/usr/bin/env bash
# Installs the Debian packages behind the browser and deployment tests: headless Chromium (the
# status page is rendered in a real browser by tests/test_status_page.py) and docker-compose
# (tests/test_compose.py validates docker-compose.yml with `docker-compose config -q`; no Docker
# engine is needed or started). Idempotent: does nothing when everything is installed.
set -euo pipefail

PACKAGES=(
    chromium        # headless screenshots and --dump-dom of the status page
    fonts-dejavu-core  # a font, so screenshots show text
    docker-compose  # `docker-compose config` validates the compose file
)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
[ ${#missing[@]} = 0 ] && exit 0
printf 'install-browser: installing %s\n' "${missing[*]}" >&2
as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
