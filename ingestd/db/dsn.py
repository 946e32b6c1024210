"""DSN helpers: mask the password for output, inject a password read from a file."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# The password runs to the *last* @ before the host: a password written raw with an @ in
# it (`u:p@ss@host`) is masked whole. Greedy \S+ may swallow more (an @ in the query) when
# the text is odd: masking too much is the safe side.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>\S+)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def mask_dsn(text: str) -> str:
    """Replace every DSN password in `text` (URL or key=value form) with ***."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def with_password(dsn: str, password: str) -> str:
    """Return the DSN carrying `password` (read from a secrets file), in the DSN's own form."""
    parts = urlsplit(dsn)
    if not parts.scheme.startswith("postgres"):
        escaped = password.replace("\\", "\\\\").replace("'", "\\'")
        return f"{dsn} password='{escaped}'"
    # Edit the raw netloc: user and host stay exactly as written (encoding, IPv6 brackets).
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0] if at else ""
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def password_of(dsn: str) -> str | None:
    """The password a DSN carries, if any (so logs can scrub it even when it is not in a URL)."""
    parts = urlsplit(dsn)
    if parts.scheme.startswith("postgres"):
        return unquote(parts.password) if parts.password else None
    match = _KV_PASSWORD.search(dsn)
    return match.group("pw").strip("'") if match else None


def check_dsn(dsn: str) -> str:
    """Return the DSN if it is a URL that parses (host, port); else raise ValueError without it."""
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            "the DSN must be a URL: postgresql://user@host:5432/db?sslmode=verify-full "
            "(libpq's key=value form is not supported)"
        )
    try:
        _ = urlsplit(dsn).port
    except ValueError as exc:
        reason = mask_dsn(str(exc))
        raise ValueError(f"the DSN is not a valid PostgreSQL URL: {reason}") from None
    return dsn
