"""The shared vocabulary (:mod:`crm.vocab`, issue 17): one spelling of loopback, windows and
intervals for every part, and the dead ``[limits]`` config refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm.config import load_config
from crm.errors import ConfigError
from crm.vocab import INTERVAL_NAMES, INTERVALS, WINDOWS, Endpoint, is_loopback
from proxy.imap.client import Endpoint as ImapEndpoint


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
        "localhost",
        "LocalHost",
        "localhost.",
        "localhost.localdomain",
        "::ffff:127.0.0.1",
    ],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "::ffff:10.0.0.1", "imap.example.com", "localhost.example.com", "", "128.0.0.1"],
)
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_the_imap_endpoint_is_an_endpoint_with_credentials() -> None:
    imap = ImapEndpoint("imap.example.com", 993, "ssl", "anna", "secret")
    assert isinstance(imap, Endpoint) and "secret" not in repr(imap)
    assert str(Endpoint("smtp.example.com", 587, "starttls")) == "smtp.example.com:587 (starttls)"


def test_windows_and_intervals_are_spelled_once() -> None:
    assert list(WINDOWS) == ["3d", "all"] and WINDOWS["all"] is None
    assert {INTERVAL_NAMES[s]: s for s in INTERVALS.values()} == INTERVALS


def test_a_config_still_setting_the_removed_limits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailcrm.toml"
    path.write_text('[limits]\nsince = ["3d"]\nintervals = ["1h"]\n')
    with pytest.raises(ConfigError, match=r"\[limits\] is no longer supported"):
        load_config(str(path), "sqlite://")
    path.write_text('log_format = "json"\n')
    assert load_config(str(path), "sqlite://").log_format == "json"
