"""Connection presets for common mail services (SPEC M2): IMAP and SMTP host, port, TLS mode, and
the sign-in the service takes (Gmail/Google Workspace and Outlook.com/Microsoft 365: OAuth2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """How to reach one mail service."""

    name: str
    label: str
    imap_host: str
    imap_port: int
    imap_tls: str
    smtp_host: str
    smtp_port: int
    smtp_tls: str
    #: what the service takes (issue 15): ``password``, or ``oauth2`` with ``oauth_provider``
    auth: str = "password"
    oauth_provider: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "gmail",
            "Gmail / Google Workspace",
            "imap.gmail.com",
            993,
            "ssl",
            "smtp.gmail.com",
            587,
            "starttls",
            "oauth2",
            "google",
        ),
        Preset(
            "outlook",
            "Outlook.com / Microsoft 365",
            "outlook.office365.com",
            993,
            "ssl",
            "smtp.office365.com",
            587,
            "starttls",
            "oauth2",
            "microsoft",
        ),
        Preset(
            "yahoo",
            "Yahoo Mail",
            "imap.mail.yahoo.com",
            993,
            "ssl",
            "smtp.mail.yahoo.com",
            465,
            "ssl",
        ),
        Preset(
            "icloud",
            "iCloud Mail",
            "imap.mail.me.com",
            993,
            "ssl",
            "smtp.mail.me.com",
            587,
            "starttls",
        ),
        Preset(
            "fastmail", "Fastmail", "imap.fastmail.com", 993, "ssl", "smtp.fastmail.com", 465, "ssl"
        ),
        Preset("zoho", "Zoho Mail", "imap.zoho.com", 993, "ssl", "smtp.zoho.com", 465, "ssl"),
        Preset("aol", "AOL Mail", "imap.aol.com", 993, "ssl", "smtp.aol.com", 465, "ssl"),
        Preset("gmx", "GMX", "imap.gmx.net", 993, "ssl", "mail.gmx.net", 587, "starttls"),
        Preset("webde", "WEB.DE", "imap.web.de", 993, "ssl", "smtp.web.de", 587, "starttls"),
        Preset(
            "yandex", "Yandex Mail", "imap.yandex.com", 993, "ssl", "smtp.yandex.com", 465, "ssl"
        ),
        Preset("mailru", "Mail.ru", "imap.mail.ru", 993, "ssl", "smtp.mail.ru", 465, "ssl"),
        Preset(
            "proton",
            "Proton Mail Bridge (local)",
            "127.0.0.1",
            1143,
            "starttls",
            "127.0.0.1",
            1025,
            "starttls",
        ),
    )
}
