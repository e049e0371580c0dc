#!/usr/bin/env bash
# Install the Debian packages behind tests/servers.py: real Dovecot (IMAP + LMTP) and Postfix
# servers that the integration tests start privately on 127.0.0.1 with their own configs.
#
# Run as root on Debian 12. Idempotent: it does nothing when everything is installed.
# The packaged system daemons are kept from starting during the install (policy-rc.d) and
# are stopped afterwards if they run anyway; the tests never use them. Nothing else is
# stopped or changed; no file in /etc/dovecot or /etc/postfix is edited.
set -euo pipefail

PACKAGES=(
    dovecot-core   # dovecot master, auth, config
    dovecot-imapd  # IMAP
    dovecot-lmtpd  # LMTP: how Postfix delivers into Dovecot's mailboxes
    postfix        # SMTP submission + queue (postfix, postmap, postqueue)
    swaks          # SMTP swiss-army knife, handy when debugging the servers by hand
    isync          # mbsync, an independent IMAP client for manual checks
)

log() { printf 'install-servers: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"

    # Keep invoke-rc.d from starting the packaged daemons while installing.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# written by scripts/install-servers.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
        trap 'if [[ $created_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
    fi

    # Refresh the package lists only when there are none or they are older than a day.
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 \
        -print -quit 2>/dev/null) ]]; then
        log "apt-get update"
        apt-get update -q
    fi

    # Postfix asks which kind of mail system to set up: none; the tests bring their own.
    debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost
EOF
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"

    if [[ $created_policy == 1 ]]; then
        rm -f "$policy"
        created_policy=0
    fi
else
    log "all packages already installed: ${PACKAGES[*]}"
fi

# The system instances must not run: the tests start private ones. Stop only the default
# instances, through their own tools, and only when their pid file names a live daemon.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    for unit in dovecot.service postfix.service; do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi

pid_runs() { # pid_file expected_name
    local pid
    [[ -r $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

dovecot_base=$(doveconf -h base_dir 2>/dev/null || echo /run/dovecot)
if pid_runs "$dovecot_base/master.pid" dovecot; then
    log "stopping the system Dovecot instance"
    doveadm stop || kill "$(tr -dc '0-9' <"$dovecot_base/master.pid")"
fi

postfix_queue=$(postconf -h queue_directory 2>/dev/null || echo /var/spool/postfix)
if pid_runs "$postfix_queue/pid/master.pid" master; then
    log "stopping the system Postfix instance"
    postfix stop || true
fi

for bin in /usr/sbin/dovecot /usr/lib/dovecot/imap /usr/lib/dovecot/lmtp /usr/sbin/postfix \
    /usr/sbin/postmap /usr/sbin/postqueue; do
    [[ -x $bin ]] || { log "missing $bin after install"; exit 1; }
done
log "ready: $(dovecot --version | cut -d' ' -f1) dovecot, postfix $(postconf -d -h mail_version 2>/dev/null)"
