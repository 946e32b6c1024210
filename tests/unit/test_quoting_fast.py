"""plain_quoting's fast path (one RE2 match through Arrow) answers as the regex that defines it,
on hostile bytes: stray, doubled and mid-field quotes, delimiters and line breaks inside quoted
fields, CR/CRLF/lone CR, empty fields, every delimiter and quote character, cut at any row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.read import quoting
from ingestd.read.quoting import _lone_cr, _matches, _plain_by_regex, _whole, plain_quoting

DELIMITERS = [",", ";", "|", "\t"]
QUOTES = ['"', "'"]
_BREAKS = ["\n", "\r\n", "\r"]


@contextmanager
def _steps_of(size: int) -> Iterator[None]:
    """The regex checks in steps of whole rows; small steps put step starts everywhere."""
    saved = quoting._STEP_BYTES
    quoting._STEP_BYTES = size
    try:
        yield
    finally:
        quoting._STEP_BYTES = saved


@st.composite
def _field(draw: st.DrawFn, d: str, q: str, clean: bool) -> str:
    other = "|" if d != "|" else ","  # another dialect's delimiter: plain text here
    pieces = ["a", "é", " ", other, d, q, q + q, "\n", "\r\n"] + ([] if clean else ["\r"])
    text = st.lists(st.sampled_from(pieces), max_size=8).map("".join)
    kinds = ["empty", "bare", "quoted", "quoted"] + ([] if clean else ["junk", "stray"])
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return ""
    if kind == "bare":
        return draw(st.text(st.sampled_from(["a", "1", "é", " "]), min_size=1))
    body = draw(text)
    if kind == "quoted":  # well formed: inner quotes doubled
        return q + body.replace(q + q, q).replace(q, q + q) + q
    if kind == "junk":  # a quoted field with bytes after its closing quote
        return q + body + q + draw(st.sampled_from(["a", q, " ", q + q]))
    return draw(st.sampled_from(["a", ""])) + q + body  # a quote mid-field, or never closed


@st.composite
def _csv(draw: st.DrawFn) -> tuple[bytes, int, str, str]:
    d, q = draw(st.sampled_from(DELIMITERS)), draw(st.sampled_from(QUOTES))
    clean = draw(st.booleans())  # well-formed quoting only: the plain answers get tested too
    rows = draw(st.lists(st.lists(_field(d, q, clean), min_size=1, max_size=5), max_size=8))
    breaks = st.sampled_from(_BREAKS[:2] if clean or draw(st.booleans()) else _BREAKS)
    text = "".join(d.join(row) + draw(breaks) for row in rows)
    if draw(st.booleans()) and text:  # the last row without its line break
        text = text.rstrip("\r\n")
    data = text.encode("utf-8")
    # Bytes flipped to a quote, delimiter or line break at random places.
    for at in draw(st.lists(st.integers(0, max(len(data) - 1, 0)), max_size=0 if clean else 3)):
        if data:
            mark = draw(st.sampled_from([q, d, "\n", "\r"])).encode()
            data = data[:at] + mark + data[at + 1 :]
    # Cut at a row boundary (after some line feed) or at the end; what follows stays in data.
    cuts = [i + 1 for i, byte in enumerate(data) if byte == 0x0A] + [len(data)]
    end = draw(st.sampled_from(cuts))
    return data, end, d, q


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_csv(), st.sampled_from([1, 5, 64, 256 << 10]), st.booleans())
def test_fast_path_answers_as_the_regex(
    case: tuple[bytes, int, str, str], step: int, padded: bool
) -> None:
    data, end, d, q = case
    if padded:  # plain rows first: past the size where plain_quoting asks RE2 first
        rows = f"{q}x{q}{d}{q}y{q}{q}{q}{d}{d}z\n".encode() * (quoting._RE2_FROM // 8)
        data, end = rows + data, len(rows) + end
    with _steps_of(step):
        expected = _plain_by_regex(data, end, d, q)
        assert plain_quoting(data, end, d, q) is expected
    if not _lone_cr(data, end):
        # The RE2 pattern alone is the regex's language (not only a sufficient check).
        pattern = _whole(d, q)
        assert pattern is not None
        assert _matches(pattern, data, end) is expected


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(DELIMITERS),
    st.sampled_from(QUOTES),
    st.binary(max_size=60).map(
        lambda b: b.translate(bytes(b"ab;,|\t\"'\n\r\x00\xe9"[i % 12] for i in range(256)))
    ),
)
def test_fast_path_on_any_bytes(d: str, q: str, data: bytes) -> None:
    ends = [i + 1 for i, byte in enumerate(data) if byte == 0x0A] + [len(data)]
    for end in ends:
        expected = _plain_by_regex(data, end, d, q)
        assert plain_quoting(data, end, d, q) is expected
        if not _lone_cr(data, end):
            pattern = _whole(d, q)
            assert pattern is not None
            assert _matches(pattern, data, end) is expected


def test_examples() -> None:
    cases = {
        b'"a";"b"\n"c";"d"\n': True,
        b'"a";"b"x;"c"\n': False,  # bytes after a closing quote
        b'a"b;c\n': False,  # a quote mid-field: COPY would open a quoted section
        b'"a""b";"";""""\n': True,  # doubled quotes, empty and quote-only fields
        b'"a;b\nc";d\r\n': True,  # delimiter and line break inside a quoted field
        b'"a"\rb\n': False,  # a lone CR
        b'"never closed\n': False,
        b'x;"\xe9\xff";y\n': True,  # Latin-1 bytes: one byte a character
    }
    for data, plain in cases.items():
        assert plain_quoting(data, len(data), ";", '"') is plain, data
        assert _plain_by_regex(data, len(data), ";", '"') is plain, data
        pattern = _whole(";", '"')
        assert pattern is not None
        assert _lone_cr(data, len(data)) or _matches(pattern, data, len(data)) is plain, data


def test_only_the_first_end_bytes_count() -> None:
    data = b'"a";"b"\nx"y\n'
    assert plain_quoting(data, 8, ";", '"')
    assert not plain_quoting(data, len(data), ";", '"')


def test_marks_without_a_pattern_fall_back_to_the_regex() -> None:
    assert _whole("\n", '"') is None and _whole(";", ";") is None and _whole("§", '"') is None
    data = '"a"§"b"\n'.encode()
    assert plain_quoting(data, len(data), "§", '"') is _plain_by_regex(data, len(data), "§", '"')
