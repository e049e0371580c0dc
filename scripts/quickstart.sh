#!/usr/bin/env bash
# The README's first command: installs mailcrm into ./.venv and runs its main job on the
# embedded SQLite default: a demo CRM is filled from the sample mailboxes in examples/ and shown,
# then `mailcrm serve` runs the relay, the pollers and the status page until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
export MAILCRM_DATABASE_URL=${MAILCRM_DATABASE_URL:-sqlite:///$PWD/examples/demo.db}
rm -f examples/demo.db examples/demo.db-wal examples/demo.db-shm
mailcrm user add anna@example.com --name "Anna Admin" --admin
mailcrm user add bob@example.com --name "Bob Sales"
printf 'demo-password\n' | mailcrm mailbox add bob@example.com --owner bob@example.com \
  --imap-host imap.example.com --smtp-host smtp.example.com --password-stdin --since all
mailcrm mailbox add sales@example.com --company --imap-host imap.example.com \
  --smtp-host smtp.example.com --since all --queue anna@example.com,bob@example.com
mailcrm exclude add @spam-partner.example
mailcrm capture examples/sample.mbox --mailbox sales@example.com --direction in
mailcrm capture examples/sent.mbox --mailbox bob@example.com --direction out
mailcrm leads list
mailcrm contacts list
mailcrm companies list
mailcrm activities list
echo
echo "Starting the gateway: SMTP relay on 127.0.0.1:2587 (STARTTLS), status page and metrics on"
echo "http://127.0.0.1:8025/ ; the demo mailboxes point at example.com servers, so they show red"
echo "with the reason. Stop with Ctrl-C."
exec mailcrm serve
