"""Zip archives, breaker3 #2-#5: the central directory read once per archive version (not per
member), members under the inbox's ignore rules (Finder zips), --dry-run listing members,
`retry ARCHIVE.zip/MEMBER` pointing at the archive."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from ingestd.storage import resolve
from ingestd.storage import zip as zipmod
from ingestd.storage.zip import ZipArchive, ignored_member
from tests.conftest import run_cli
from tests.helpers import log_events
from tests.pg import Db


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def flags(inbox: Path) -> list[object]:
    return ["--inbox", inbox, "--table", "t", "--mode", "append"]


def test_an_archive_of_1000_members_reads_its_directory_a_bounded_number_of_times(
    cli, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_zip(inbox / "many.zip", {f"p/m{i:05d}.csv": f"id\n{i}\n".encode() for i in range(1000)})
    before = zipmod.directory_reads
    result = cli("--once", *flags(inbox))
    assert result.code == 0, result.err[-2000:]
    # Hash and load open each member (2,000 opens): the directory is parsed at the offer
    # only, not once per open.
    assert zipmod.directory_reads - before <= 3
    ids = [r["id"] for r in db.fetch("SELECT id FROM t")]
    assert len(ids) == 1000
    assert sorted(map(int, ids)) == list(range(1000))
    rows = db.manifest()
    assert len(rows) == 1000 and {r["status"] for r in rows} == {"success"}
    assert [p.name for p in (tmp_path / "done").rglob("*.zip")] == ["many.zip"]
    assert not inbox.joinpath("many.zip").exists()


def _read(archive: ZipArchive, member: str) -> bytes:
    [found] = [m for m in archive.members() if m.member == member]
    stream = archive.open_stream(found)
    try:
        data = b""
        while chunk := stream.read(1 << 16):  # a stream has no size: read it as readers do
            data += chunk
    finally:
        stream.close()
    return data


def test_a_changed_archive_reads_its_directory_again(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    write_zip(path, {"x.csv": b"id\n1\n", "y.csv": b"id\n2\n"})
    outer = resolve(path)
    version = outer.identity(path)
    assert version is not None
    archive = ZipArchive(outer, path, PurePosixPath("a.zip"), version, lambda f, r: "")
    before = zipmod.directory_reads
    assert _read(archive, "x.csv") == b"id\n1\n"
    assert _read(archive, "y.csv") == b"id\n2\n"
    assert zipmod.directory_reads - before == 1
    # Replaced by another archive (other offsets, other members): read again, never the old
    # directory over the new bytes.
    write_zip(path, {"w.csv": b"id\n0\n" * 50, "x.csv": b"id\n9\n"})
    os.utime(path, ns=(1, 1))
    assert _read(archive, "x.csv") == b"id\n9\n"
    assert zipmod.directory_reads - before == 2


def test_member_ignore_rules() -> None:
    for name in ("__MACOSX/._a.csv", ".DS_Store", "sub/.hidden.csv", "b.csv.tmp", "c.part",
                 "d.partial", "e.csv.error.json", ".git/x.csv", "x/__MACOSX/y.csv"):  # fmt: skip
        assert ignored_member(name), name
    for name in ("a.csv", "sub/a.csv", "../up.csv", "/abs.csv", "./a.csv", "a.tmp.csv"):
        assert not ignored_member(name), name


def test_a_finder_zip_loads_its_data_and_moves_to_done(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_zip(
        inbox / "mac.zip",
        {
            "a.csv": b"id\n1\n2\n",
            "__MACOSX/._a.csv": b"\x00\x05\x16\x07AppleDouble",
            ".DS_Store": b"\x00\x00\x00\x01Bud1",
            "b.csv.tmp": b"id\nhalf",
            "sub/.hidden.csv": b"id\n99\n",
        },
    )
    result = cli("--once", "--log-level", "debug", *flags(inbox))
    assert result.code == 0, result.err[-2000:]
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == ["1", "2"]
    assert [m["filename"] for m in db.manifest()] == ["mac.zip/a.csv"]
    assert [p.name for p in (tmp_path / "done").rglob("*.zip")] == ["mac.zip"]
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())
    ignored = {e["member"] for e in log_events(result.err, "zip_member_ignored")}
    assert ignored == {"__MACOSX/._a.csv", ".DS_Store", "b.csv.tmp", "sub/.hidden.csv"}
    assert not log_events(result.err, "zip_member_unmatched")


def test_dry_run_lists_the_members_as_the_real_run_would(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_zip(inbox / "d.zip", {"good.csv": b"id,v\n1,a\n2,b\n", "__MACOSX/._good.csv": b"x"})
    result = cli("--once", "--dry-run", *flags(inbox))
    assert result.code == 0, result.out + result.err
    assert "ok   d.zip/good.csv -> " in result.out
    assert "2 rows" in result.out
    assert "__MACOSX" not in result.out
    assert (inbox / "d.zip").exists() and not (tmp_path / "done").exists()
    assert db.fetch("SELECT 1 FROM pg_tables WHERE tablename = 't'") == []
    # The CNPJ contract sets file_type = "csv": the archive is still a folder of members.
    result = cli("--once", "--dry-run", "--file-type", "csv", *flags(inbox))
    assert result.code == 0, result.out + result.err
    assert "ok   d.zip/good.csv -> " in result.out


def test_dry_run_skips_unmatched_members_and_fails_what_the_real_run_fails(
    cli, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_zip(inbox / "Empresas1.zip", {"K.EMPRECSV": b"1;a\n2;b\n", "README": b"hello\n"})
    write_zip(inbox / "Other.zip", {"README": b"hello\n"})
    (inbox / "Cut.zip").write_bytes(b"PK\x03\x04 cut upload")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'inbox = "{inbox}"\n[[contracts]]\npattern = "Empresas*.zip/*EMPRECSV"\n'
        'table = "e"\nmode = "append"\nfile_type = "csv"\nheaders = ["id", "v"]\n'
        '[contracts.csv]\ndelimiter = ";"\nheader = false\n'
    )
    result = cli("--config", cfg, "--once", "--dry-run")
    out = result.out
    assert "ok   Empresas1.zip/K.EMPRECSV -> " in out, out
    assert "skip Empresas1.zip/README: no contract matches" in out
    assert "FAIL Other.zip: no contract matches any member of Other.zip" in out
    assert "FAIL Cut.zip: Cut.zip is not a readable zip archive" in out
    assert result.code == 1
    assert "Traceback" not in out + result.err
    # Without the two archives the real run would fail, the dry run says all would load.
    (inbox / "Other.zip").unlink()
    (inbox / "Cut.zip").unlink()
    assert cli("--config", cfg, "--once", "--dry-run").code == 0


def test_retry_of_a_member_name_points_at_the_archive(
    cli, db: Db, tmp_path: Path, monkeypatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_zip(inbox / "r.zip", {"good.csv": b"id\n1\n", "bad.csv": b"id\n1,2\n"})
    assert cli("--once", *flags(inbox)).code == 1
    failed = tmp_path / "failed"
    assert (failed / "r.zip").is_file()
    monkeypatch.chdir(tmp_path)
    for name in ("r.zip/bad.csv", "failed/r.zip/bad.csv", str(failed / "r.zip" / "bad.csv")):
        result = run_cli(["retry", name, "--inbox", str(inbox)])
        assert result.code == 2
        [line] = result.err.strip().splitlines()
        assert "is a member of the zip archive r.zip: retry the archive" in line
        assert f"(ingestd retry {failed.resolve() / 'r.zip'})" in line or (
            "(ingestd retry failed/r.zip)" in line
        ), line
    assert (failed / "r.zip").is_file()  # nothing moved
    # What the line says works.
    result = run_cli(["retry", "failed/r.zip", "--inbox", str(inbox)])
    assert result.code == 0, result.err
    assert (inbox / "r.zip").is_file()
    # Not an archive member: the message as before.
    result = run_cli(["retry", "nothing/x.csv", "--inbox", str(inbox)])
    assert result.code == 2 and "is not a file in the failed directory" in result.err
