"""Deployment files: docker-compose.yml validated by docker-compose itself (Debian's 1.29; no
Docker engine is needed), the Dockerfile's essentials, and the systemd unit by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SECRETS = {"MAILCRM_DB_PASSWORD": "not-a-real-password", "MAILCRM_SECRET_KEY": "not-a-real-key"}
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (scripts/install-browser.sh)"
)


def compose(*args: str, secrets: bool = True) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILCRM_", "COMPOSE_"))}
    env.update(SECRETS if secrets else {})
    return subprocess.run(
        [COMPOSE, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_compose
def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_runs_two_nodes_and_postgres() -> None:
    result = compose("config", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"postgres", "migrate", "mailcrm-1", "mailcrm-2"} <= services
    assert {"dovecot", "postfix"} <= services  # in the demo profile
    resolved = compose("config").stdout
    assert "MAILCRM_NODE_NAME: mailcrm-1" in resolved and "MAILCRM_NODE_NAME: mailcrm-2" in resolved
    assert "service_completed_successfully" in resolved  # nodes wait for the migration
    assert "not-a-real-password@postgres:5432/mailcrm" in resolved


@needs_compose
def test_compose_nodes_may_hold_10000_mailboxes_open() -> None:
    """A node keeps a socket per linked mailbox: both nodes get an open files limit far above
    10,000, soft and hard (issue 19), read from docker-compose's resolved config."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    blocks = re.findall(r"^  (\S+):\n((?:    .*\n)*)", result.stdout, re.M)
    services = {name: block for name, block in blocks}
    for name in ("mailcrm-1", "mailcrm-2"):
        limits = re.search(
            r"^    ulimits:\n      nofile:\n        hard: (\d+)\n        soft: (\d+)$",
            services[name],
            re.M,
        )
        assert limits is not None, services[name]
        assert min(int(limits[1]), int(limits[2])) >= 16384, limits.group(0)
    assert "ulimits" not in services["postgres"]


def test_systemd_unit_lifts_the_open_files_limit() -> None:
    unit = (ROOT / "deploy" / "mailcrm.service").read_text(encoding="utf-8")
    limits = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")
    ]
    assert limits and int(limits[-1].split(":")[0]) >= 16384, limits


@needs_compose
def test_compose_refuses_to_run_without_secrets() -> None:
    result = compose("config", "-q", secrets=False)
    assert result.returncode != 0
    assert "MAILCRM_DB_PASSWORD" in result.stderr or "MAILCRM_SECRET_KEY" in result.stderr


def test_compose_node_config_is_valid_for_mailcrm() -> None:
    from crm.config import load_config

    config = load_config(str(ROOT / "deploy" / "compose.toml"), "sqlite://")
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8025)
    assert config.relay.port == 2587 and config.log_format == "json"


def test_dockerfile_installs_the_package_on_python_311_slim() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "\nFROM python:3.11-slim\n" in text
    assert "pip install ." in text and "USER mailcrm" in text
    assert "/healthz" in text and 'CMD ["serve"]' in text
    for path in ("pyproject.toml", "cli.py", "crm", "proxy"):
        assert path in text and (ROOT / path).exists()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = (ROOT / "deploy" / "mailcrm.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/mailcrm/.venv/bin/mailcrm serve" in unit
    here = str(Path(sys.executable).parent / "mailcrm")  # an executable that exists here
    local = unit.replace("/opt/mailcrm/.venv/bin/mailcrm", here).replace(
        "EnvironmentFile=/etc/mailcrm/env", "EnvironmentFile=-/etc/mailcrm/env"
    )
    path = tmp_path / "mailcrm.service"
    path.write_text(local, encoding="utf-8")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "mailcrm.service" not in result.stderr, result.stderr  # no warnings about the unit
