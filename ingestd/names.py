"""File names are bytes: one exact, reversible text form for the manifest and the logs.

Python holds a name that is not valid UTF-8 as a str with lone surrogates
(os.fsdecode's surrogateescape), which is exact on disk but cannot go into a PostgreSQL
text column or a UTF-8 log line. The manifest form writes each byte that is not part of
valid UTF-8 as ``\\xNN`` and each backslash as ``\\\\``; everything else is kept as it is,
so a valid name without a backslash (nearly every name) is stored unchanged, and two
different names never share a manifest form.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def manifest_name(name: str) -> str:
    """The text the manifest stores for a file name (see the module docstring)."""
    if _valid_utf8(name):
        return name.replace("\\", "\\\\")
    raw = name.encode("utf-8", "surrogateescape")
    out: list[str] = []
    while raw:
        try:
            out.append(raw.decode("utf-8").replace("\\", "\\\\"))
            break
        except UnicodeDecodeError as exc:
            out.append(raw[: exc.start].decode("utf-8").replace("\\", "\\\\"))
            out.extend(f"\\x{b:02x}" for b in raw[exc.start : exc.end])
            raw = raw[exc.end :]
    return "".join(out)


def from_manifest(text: str) -> str:
    """The file name (surrogateescape str, as os.fsdecode gives it) a manifest form stands for."""
    if "\\" not in text:
        return text
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        raw += text[pos : match.start()].encode("utf-8")
        escape = match.group(1)
        raw += b"\\" if escape == "\\" else bytes([int(escape[1:], 16)])
        pos = match.end()
    raw += text[pos:].encode("utf-8")
    return bytes(raw).decode("utf-8", "surrogateescape")


def shown(text: str) -> str:
    """Text safe to print or log: bytes that are not UTF-8 as ``\\xNN``, the rest as it is."""
    if _valid_utf8(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate not made by surrogateescape: name it
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown_name(name: str) -> str:
    """A file name for a terminal line: as `shown`, and control characters (a newline, an
    escape sequence) as ``\\xNN`` too, so that no name can break or forge a line."""
    text = shown(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
