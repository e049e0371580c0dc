"""The exception tree of mailcrm: one root, a few branches, each with a clear user-facing message.

    MailcrmError                  root of everything mailcrm raises on purpose
    ├── ConfigError               the config file or an option is wrong
    ├── InvalidInput              a value given by a person or a script is refused
    │   ├── InvalidAddress        not an e-mail address
    │   └── InvalidExclusion      an exclusion entry in a form that is not accepted (C6)
    ├── NotFound                  a user, mailbox, lead, activity ... does not exist
    ├── AlreadyExists             creating something that is there already
    ├── PermissionDenied          the action is not allowed for this user (U2, U3)
    ├── CaptureError              a message could not be captured (it is skipped, never lost)
    │   └── MessageParseError     the raw bytes are not a usable RFC 5322 message
    ├── SecretError               a stored credential cannot be encrypted or decrypted
    └── UpstreamError             a real mail server refused or could not be reached
        └── UpstreamAuthError     the real server refused the login

The CLI prints ``str(error)`` on one line and exits 1; nothing else is shown to the user.
"""

from __future__ import annotations


class MailcrmError(Exception):
    """Root of every error mailcrm raises on purpose."""


class ConfigError(MailcrmError):
    """The configuration (file, environment or option) is wrong."""


class InvalidInput(MailcrmError):
    """A value given by a person or a script is refused."""


class InvalidAddress(InvalidInput):
    """The value is not an e-mail address."""


class InvalidExclusion(InvalidInput):
    """An exclusion entry is in a form that is not accepted (SPEC C6)."""


class NotFound(MailcrmError):
    """The named object does not exist."""


class AlreadyExists(MailcrmError):
    """The object to create exists already."""


class PermissionDenied(MailcrmError):
    """The action is not allowed for this user (SPEC U2, U3)."""


class CaptureError(MailcrmError):
    """A message could not be captured; it is skipped with this reason, never lost."""


class MessageParseError(CaptureError):
    """The raw bytes are not a usable RFC 5322 message."""


class SecretError(MailcrmError):
    """A stored credential cannot be encrypted or decrypted (wrong or missing key)."""


class UpstreamError(MailcrmError):
    """A real mail server refused or could not be reached."""


class UpstreamAuthError(UpstreamError):
    """The real mail server refused the login."""


class OAuthError(UpstreamError):
    """An OAuth2 exchange failed for a passing reason (the token endpoint is down, slow or
    answered nonsense): try again later."""


class ReauthorizeNeeded(OAuthError, UpstreamAuthError):
    """The provider refused the refresh token (revoked, password changed, consent withdrawn):
    only the owner signing in again (``mailcrm mailbox authorize``) helps."""
