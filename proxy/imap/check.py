"""``mailcrm mailbox check`` (SPEC M6): settings and connections verified, no mail collected.

Logs in to IMAP, resolves the folders the poller would process (LIST only: nothing is selected,
fetched or flagged), logs in to SMTP, and logs out. The outcome is recorded as the mailbox's
status (M5), like any check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from crm.errors import InvalidInput, UpstreamError
from crm.vocab import is_loopback

from .client import Endpoint, ImapClient
from .folders import discover, not_on_server
from .plan import MailboxPlan

Tokens = Callable[[str], tuple[str, dt.datetime]]


@dataclass
class CheckReport:
    """What the check found; ``problems`` empty means everything worked."""

    address: str
    imap: str = "not checked"
    capabilities: list[str] = field(default_factory=list)
    folders: list[dict[str, str]] = field(default_factory=list)
    smtp: str = "not checked"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every part of the check worked."""
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """The ``mailbox check --json`` shape."""
        return {
            "address": self.address,
            "ok": self.ok,
            "imap": self.imap,
            "capabilities": self.capabilities,
            "folders": self.folders,
            "smtp": self.smtp,
            "problems": self.problems,
        }


async def _imap(plan: MailboxPlan, report: CheckReport, timeout: float, token: str | None) -> None:
    if plan.endpoint is None:
        report.imap = plan.problem or "not configured"
        report.problems.append(report.imap)
        return
    client = ImapClient(plan.endpoint, timeout)
    try:
        await client.connect()
        await client.login(token)
        report.capabilities = sorted(client.capabilities)
        found = await discover(client, plan.folders)
        report.folders = [{"name": f.name, "direction": f.direction.value} for f in found.folders]
        report.imap = "ok"
        report.problems += [f"folder {name} not on the server" for name in found.missing]
    except UpstreamError as exc:
        report.imap = str(exc)
        report.problems.append(str(exc))
    finally:
        await client.logout()


async def smtp_login(endpoint: Endpoint, timeout: float, token: str | None = None) -> None:
    """Log in to the SMTP server and quit; raises UpstreamError with the reason."""
    if endpoint.tls == "none" and not is_loopback(endpoint.host):
        raise UpstreamError(f"plaintext SMTP to {endpoint.host} refused: use ssl or starttls")
    smtp = aiosmtplib.SMTP(
        hostname=endpoint.host,
        port=endpoint.port,
        use_tls=endpoint.tls == "ssl",
        start_tls=endpoint.tls == "starttls",
        tls_context=endpoint.ssl_context() if endpoint.tls != "none" else None,
        timeout=timeout,
    )
    try:
        await smtp.connect()
        if token is not None:  # an OAuth2 mailbox (issue 15)
            await smtp.auth_xoauth2(endpoint.login, token)
        else:
            await smtp.login(endpoint.login, endpoint.password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise UpstreamError(f"SMTP login as {endpoint.login} failed: {exc.message}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise UpstreamError(f"SMTP {endpoint.host}:{endpoint.port}: {exc}") from exc
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()


async def check_mailbox(
    plan: MailboxPlan, timeout: float = 30.0, tokens: Tokens | None = None
) -> CheckReport:
    """Verify the IMAP and SMTP settings of one mailbox; collects nothing. An OAuth2 mailbox's
    access token comes from ``tokens`` (refreshed first when due)."""
    report = CheckReport(plan.address)
    token: str | None = None
    if plan.endpoint is not None and plan.endpoint.oauth:
        try:
            if tokens is None:
                raise UpstreamError("OAuth2 mailbox, but no way to get its token here")
            token = (await asyncio.to_thread(tokens, plan.address))[0]
        except UpstreamError as exc:
            report.imap = report.smtp = str(exc)
            report.problems.append(str(exc))
            return report
    await _imap(plan, report, timeout, token)
    if plan.smtp is None:  # no password: said once, as the IMAP problem already
        report.smtp = plan.smtp_problem or "not configured"
        return report
    try:
        await smtp_login(plan.smtp, timeout, token)
        report.smtp = "ok"
    except UpstreamError as exc:
        report.smtp = str(exc)
        report.problems.append(str(exc))
    return report


async def missing_folders(plan: MailboxPlan, timeout: float) -> list[str]:
    """The configured folders the server does not have (raises UpstreamError when it cannot be
    asked)."""
    assert plan.endpoint is not None
    client = ImapClient(plan.endpoint, timeout)
    try:
        await client.connect()
        await client.login()
        return (await discover(client, plan.folders)).missing
    finally:
        await client.logout()


def _run(job: Coroutine[Any, Any, list[str]]) -> list[str]:
    """Run ``job`` on a loop of its own, in a thread: the caller may be inside a loop already."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, job).result()


def verify_folders(plan: MailboxPlan, timeout: float) -> str:
    """``mailbox add/set --folders``: ask the server for the folders when it can be asked.

    Raises InvalidInput naming the folders the server does not have (the caller's transaction
    rolls back: nothing changes); otherwise returns the line to show: found, or when they will be
    checked.
    """
    names = ", ".join(plan.folders)
    later = f"checked when the poller connects, or now by `mailcrm mailbox check {plan.address}`"
    if plan.endpoint is None:
        return f"folders {names} not checked ({plan.problem or 'no IMAP server'}): {later}"
    try:
        missing = _run(missing_folders(plan, timeout))
    except UpstreamError as exc:
        return f"folders {names} not checked ({exc}): {later}"
    problem = not_on_server(missing)
    if problem:
        raise InvalidInput(f"{problem}: mailbox {plan.address} not changed")
    return f"folders {names} found on the server"
