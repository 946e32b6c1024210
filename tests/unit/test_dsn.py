"""DSN helpers: a password never shows, a password file's secret is injected safely."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from ingestd.db.dsn import mask_dsn, password_of, with_password


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        (
            "postgres://u:secret@h:5432/db?sslmode=require",
            "postgres://u:***@h:5432/db?sslmode=require",
        ),
        ("postgresql://u:p%40ss%20w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://:secret@h/db", "postgresql://:***@h/db"),
        ("POSTGRESQL://u:secret@h/db", "POSTGRESQL://u:***@h/db"),
        ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password = secret", "host=h password = ***"),
        ("host=h PASSWORD=secret", "host=h PASSWORD=***"),
        ("host=h password='se cret' user=u", "host=h password=*** user=u"),
        (r"host=h password='it\'s' user=u", "host=h password=*** user=u"),
    ],
)
def test_mask_dsn_hides_passwords(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked
    assert "secret" not in mask_dsn(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:@/postgres?host=/tmp",
        "postgresql://u@h/db",
        "postgresql:///db?host=/var/run/postgresql",
        "host=h user=u dbname=d",
        "no dsn here at all",
    ],
)
def test_mask_dsn_leaves_password_less_text_alone(dsn: str) -> None:
    assert mask_dsn(dsn) == dsn


def test_mask_dsn_inside_a_longer_message() -> None:
    text = (
        "cannot connect to postgresql://app:hunter2@db.example:5432/prod: timeout; "
        "fallback host=replica password=hunter3 failed too"
    )
    masked = mask_dsn(text)
    assert "hunter2" not in masked and "hunter3" not in masked
    assert masked == (
        "cannot connect to postgresql://app:***@db.example:5432/prod: timeout; "
        "fallback host=replica password=*** failed too"
    )


def test_mask_dsn_masks_every_occurrence() -> None:
    text = "a postgresql://u:one@h/db b postgresql://v:two@k/db"
    assert mask_dsn(text) == "a postgresql://u:***@h/db b postgresql://v:***@k/db"


def test_with_password_builds_a_url_with_a_quoted_password() -> None:
    dsn = with_password("postgresql://u@h:5432/db?sslmode=require", "p@ss w/:rd")
    assert dsn == "postgresql://u:p%40ss%20w%2F%3Ard@h:5432/db?sslmode=require"
    parts = urlsplit(dsn)
    assert unquote(parts.password or "") == "p@ss w/:rd"
    assert (parts.username, parts.hostname, parts.port, parts.path) == ("u", "h", 5432, "/db")


def test_with_password_replaces_an_existing_password() -> None:
    assert with_password("postgresql://u:old@h/db", "new") == "postgresql://u:new@h/db"


def test_with_password_on_a_socket_dsn() -> None:
    dsn = with_password("postgresql:///db?host=/tmp", "pw")
    assert dsn == "postgresql://:pw@/db?host=/tmp"
    assert password_of(dsn) == "pw"


def test_with_password_on_a_keyword_dsn() -> None:
    assert with_password("host=h user=u", "pw") == "host=h user=u password='pw'"


def test_with_password_result_is_masked() -> None:
    for base in ("postgresql://u@h/db", "host=h user=u"):
        dsn = with_password(base, "Sup3r")
        assert "Sup3r" not in mask_dsn(dsn)


def test_with_password_keeps_ipv6_brackets() -> None:
    assert with_password("postgresql://u@[::1]:5432/db", "pw") == "postgresql://u:pw@[::1]:5432/db"


def test_with_password_does_not_double_encode_the_user() -> None:
    assert with_password("postgresql://a%40b@h/db", "pw") == "postgresql://a%40b:pw@h/db"


def test_with_password_quotes_a_keyword_dsn_password() -> None:
    dsn = with_password("host=h user=u", "two words")
    assert dsn == "host=h user=u password='two words'"


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://u:secret@h/db", "secret"),
        ("postgres://u:secret@h/db", "secret"),
        ("postgresql://u@h/db", None),
        ("postgresql://postgres:@/postgres?host=/tmp", None),
        ("host=h password=secret user=u", "secret"),
        ("host=h password='se cret'", "se cret"),
        ("host=h user=u", None),
        ("", None),
    ],
)
def test_password_of(dsn: str, password: str | None) -> None:
    assert password_of(dsn) == password


def test_password_of_decodes_url_passwords() -> None:
    assert password_of("postgresql://u:p%40ss@h/db") == "p@ss"
