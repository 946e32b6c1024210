"""Zip archives as folders (issue 17, scope 3): each member a manifest row under
ARCHIVE.zip/MEMBER, streamed from the archive; the archive moves once every member ended."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.helpers import log_events
from tests.pg import Db

HEADERS = ["cnpj_basico", "razao_social", "natureza_juridica", "capital_social"]
MEMBERS = ("K3241.K03200Y0.D41109.EMPRECSV", "K3241.K03200Y1.D41109.EMPRECSV")


def cnpj_rows(start: int, n: int, tag: str = "") -> list[tuple[str, str, str, str]]:
    """CNPJ-like rows: accents (latin-1), `;` and quotes inside quoted fields."""
    names = ["AÇÃO LTDA", 'BAR "DO ZÉ"', "A;B COMÉRCIO", "SÃO PAULO S.A."]
    return [
        (f"{i:08d}", f"{names[i % 4]}{tag}", "2062", f"{i},00") for i in range(start, start + n)
    ]


def member_bytes(rows: list[tuple[str, str, str, str]]) -> bytes:
    lines = [";".join('"' + v.replace('"', '""') + '"' for v in r) for r in rows]
    return ("\n".join(lines) + "\n").encode("latin-1")


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def config(tmp_path: Path, mode: str = "upsert") -> Path:
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text(
        f'inbox = "{tmp_path / "inbox"}"\n'
        "[[contracts]]\n"
        'name = "empresas"\n'
        'pattern = "Empresas*.zip/*EMPRECSV"\n'
        'table = "empresas"\n'
        'file_type = "csv"\n'
        f'mode = "{mode}"\n'
        'pk = ["cnpj_basico"]\n'
        f"headers = {json.dumps(HEADERS)}\n"
        "[contracts.csv]\n"
        'delimiter = ";"\n'
        'encoding = "latin-1"\n'
        "header = false\n"
    )
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return cfg


def table(db: Db) -> list[tuple[str, ...]]:
    got = db.fetch(f"SELECT {', '.join(HEADERS)} FROM empresas ORDER BY cnpj_basico")
    return [tuple(r.values()) for r in got]


def done_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "done").rglob("*") if p.is_file())


def test_cnpj_zip_loads_members_skips_a_redrop_and_reloads_only_a_changed_member(
    cli, db: Db, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    inbox = tmp_path / "inbox"
    first, second = cnpj_rows(0, 1500), cnpj_rows(1500, 900)
    members = {
        MEMBERS[1]: member_bytes(second),  # written out of order: loaded in name order
        MEMBERS[0]: member_bytes(first),
        "README": b"Dados abertos CNPJ\n",
    }
    write_zip(inbox / "Empresas0.zip", members)
    result = cli("--config", cfg, "--once", "--chunk-size", 500, "--log-level", "INFO")
    assert result.code == 0, result.err
    assert table(db) == first + second
    # A member is a stream out of its archive: never raw COPY of its bytes, never split.
    assert {e["via"] for e in log_events(result.err, "batch_committed")} == {"arrow"}
    [unmatched] = log_events(result.err, "zip_member_unmatched")
    assert unmatched["member"] == "README"
    names = [m["filename"] for m in db.manifest()]
    assert names == [f"Empresas0.zip/{m}" for m in MEMBERS]  # name order, README not a row
    assert {m["status"] for m in db.manifest()} == {"success"}
    # A member's checksum is the sha256 of its decompressed bytes.
    sums = [bytes(m["checksum"]) for m in db.manifest()]
    assert sums == [hashlib.sha256(members[m]).digest() for m in MEMBERS]
    assert not (inbox / "Empresas0.zip").exists()
    assert done_files(tmp_path) == ["Empresas0.zip"]
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())

    # Re-dropped, the same bytes: every member skipped, no row twice, the archive moves.
    write_zip(inbox / "Empresas0.zip", members)
    again = cli("--config", cfg, "--once", "--log-level", "INFO")
    assert again.code == 0, again.err
    assert table(db) == first + second
    assert len(db.manifest()) == 2
    skipped = {e["file"] for e in log_events(again.err, "file_skipped")}
    assert skipped == {f"Empresas0.zip/{m}" for m in MEMBERS}
    assert not (inbox / "Empresas0.zip").exists()

    # One member changed: only it loads, as a new version.
    changed = cnpj_rows(1500, 900, tag=" NOVO")
    write_zip(inbox / "Empresas0.zip", {**members, MEMBERS[1]: member_bytes(changed)})
    third = cli("--config", cfg, "--once", "--log-level", "INFO")
    assert third.code == 0, third.err
    assert table(db) == first + changed
    rows = db.fetch("SELECT filename, count(*) AS n FROM ingestion_manifest GROUP BY 1 ORDER BY 1")
    assert [(r["filename"], r["n"]) for r in rows] == [
        (f"Empresas0.zip/{MEMBERS[0]}", 1),
        (f"Empresas0.zip/{MEMBERS[1]}", 2),
    ]
    assert {e["file"] for e in log_events(third.err, "file_skipped")} == {
        f"Empresas0.zip/{MEMBERS[0]}"
    }
    assert not (inbox / "Empresas0.zip").exists()


def _encrypted_zip(path: Path, members: dict[str, bytes], secret: str) -> None:
    """A zip with every member encrypted: zip -e's ZipCrypto, else the flag bit set by hand."""
    if shutil.which("zip"):
        work = path.parent / "zipwork"
        work.mkdir()
        for name, data in members.items():
            (work / name).write_bytes(data)
        subprocess.run(
            ["zip", "-q", "-P", secret, str(path.resolve()), *members],
            cwd=work,
            check=True,
        )
        shutil.rmtree(work)
        return
    write_zip(path, members, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        while at >= 0:
            data[at + flag_at] |= 0x1
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))


def test_an_encrypted_member_fails_the_archive_naming_it(cli, db: Db, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    inbox = tmp_path / "inbox"
    plain = cnpj_rows(0, 10)
    write_zip(inbox / "Empresas1.zip", {MEMBERS[0]: member_bytes(plain)})
    locked = inbox / "Empresas2.zip"
    _encrypted_zip(locked, {MEMBERS[1]: member_bytes(cnpj_rows(10, 10))}, "segredo")
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert "encrypted zip member" in result.out
    assert "Traceback" not in result.out + result.err
    assert "segredo" not in result.out + result.err
    assert table(db) == plain  # the other archive loads
    assert done_files(tmp_path) == ["Empresas1.zip"]
    assert (tmp_path / "failed" / "Empresas2.zip").is_file()
    sidecar = json.loads((tmp_path / "failed" / "Empresas2.zip.error.json").read_text())
    [failed] = sidecar["members_failed"]
    assert failed["member"] == MEMBERS[1]
    assert "encrypted zip member" in failed["reason"]
    [row] = [m for m in db.manifest() if m["filename"].startswith("Empresas2.zip/")]
    assert row["status"] == "failed"


def test_a_corrupt_archive_fails_with_one_line(cli, db: Db, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    bad = tmp_path / "inbox" / "Empresas3.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert "Empresas3.zip is not a readable zip archive" in result.out
    assert "Traceback" not in result.out + result.err
    assert (tmp_path / "failed" / "Empresas3.zip").is_file()
    sidecar = json.loads((tmp_path / "failed" / "Empresas3.zip.error.json").read_text())
    assert "not a readable zip archive" in sidecar["reason"]


def test_a_member_with_a_broken_crc_fails_the_archive(cli, db: Db, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = tmp_path / "inbox" / "Empresas4.zip"
    good = cnpj_rows(0, 20)
    write_zip(path, {MEMBERS[0]: member_bytes(good), MEMBERS[1]: member_bytes(good)},
              zipfile.ZIP_STORED)  # fmt: skip
    data = bytearray(path.read_bytes())
    at = data.rfind("AÇÃO".encode("latin-1"))  # a byte of the second member's data
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert "Traceback" not in result.out + result.err
    sidecar = json.loads((tmp_path / "failed" / "Empresas4.zip.error.json").read_text())
    assert [f["member"] for f in sidecar["members_failed"]] == [MEMBERS[1]]
    assert "corrupt" in sidecar["members_failed"][0]["reason"]
    assert table(db) == good  # the first member loaded


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_zip_methods_read_alike(cli, db: Db, tmp_path: Path, method: int) -> None:
    cfg = config(tmp_path)
    rows = cnpj_rows(0, 300)
    write_zip(tmp_path / "inbox" / "Empresas5.zip", {MEMBERS[0]: member_bytes(rows)}, method)
    result = cli("--config", cfg, "--once")
    assert result.code == 0, result.err
    assert table(db) == rows


def test_two_daemons_share_archives_every_row_once_and_each_archive_moves_once(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    """Each instance moves an archive only once every member ended there (loaded, or found
    loaded once the other's lease ran out): never while the other still loads a member."""
    from tests.daemon import Daemon, wait_for

    settings = "settle_s = 0.1\nrescan_s = 0.5\nlease_s = 1\n"
    text = settings + config(tmp_path, mode="append").read_text()
    inbox = tmp_path / "inbox"
    expected = []
    for a in range(3):
        members = {}
        for m in range(3):
            rows = cnpj_rows((a * 3 + m) * 2000, 2000)
            expected += rows
            members[f"K{m}.EMPRECSV"] = member_bytes(rows)
        write_zip(inbox / f"Empresas{a}.zip", members)
    daemons = [
        Daemon(tmp_path, dsn, text, ("--instance-id", name, "--chunk-size", "200"))
        for name in ("a", "b")
    ]
    try:
        wait_for(lambda: len(done_files(tmp_path)) == 3 or any(d.proc.poll() for d in daemons),
                 timeout_s=90, what="three archives in done/")  # fmt: skip
        assert done_files(tmp_path) == [f"Empresas{a}.zip" for a in range(3)]
        wait_for(lambda: not list(inbox.iterdir()), timeout_s=10, what="an empty inbox")
    finally:
        for d in daemons:
            d.kill()
    assert table(db) == sorted(expected)
    assert db.val("SELECT count(*) FROM empresas") == len(expected)
    assert {m["status"] for m in db.manifest()} == {"success"}
    assert len(db.manifest()) == 9
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())
    for d in daemons:
        assert not d.events("internal_error"), d.logs_text()[-2000:]
    assert {r["owner"] for r in db.fetch("SELECT owner FROM ingestion_manifest")} <= {"a", "b"}


def test_odd_members_each_end_alone_and_the_sidecar_names_the_failed(
    cli, db: Db, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = tmp_path / "c.toml"
    contract = '[[contracts]]\npattern = "**"\ntable = "t"\nmode = "append"\n'
    cfg.write_text(f'inbox = "{inbox}"\n{contract}')
    with zipfile.ZipFile(inbox / "P.zip", "w") as zf:
        zf.writestr("x.parquet", b"PAR1 not really")
        zf.writestr("sub/y.csv", "a\n1\n")
        zf.writestr("../up.csv", "a\n2\n")
        zf.writestr("new\nline.csv", "a\n3\n")
        zf.writestr("ragged.csv", "a\n1,2\n")
        zf.writestr("folder/", b"")
    zipfile.ZipFile(inbox / "E.zip", "w").close()
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert "Traceback" not in result.out + result.err
    assert sorted(r["a"] for r in db.fetch("SELECT a FROM t")) == ["1", "2", "3"]
    sidecar = json.loads((tmp_path / "failed" / "P.zip.error.json").read_text())
    assert [f["member"] for f in sidecar["members_failed"]] == ["ragged.csv", "x.parquet"]
    assert "a Parquet file needs random access" in sidecar["members_failed"][1]["reason"]
    names = {m["filename"] for m in db.manifest() if m["status"] == "success"}
    assert names == {"P.zip/sub/y.csv", "P.zip/../up.csv", "P.zip/new\nline.csv"}
    empty = json.loads((tmp_path / "failed" / "E.zip.error.json").read_text())
    assert "E.zip holds no files" in empty["reason"]


def test_a_member_in_deflate64_fails_saying_so(cli, db: Db, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = tmp_path / "inbox" / "Empresas6.zip"
    write_zip(path, {MEMBERS[0]: member_bytes(cnpj_rows(0, 5))}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    for sig, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(sig)
        data[at + method_at : at + method_at + 2] = (9).to_bytes(2, "little")  # deflate64
    path.write_bytes(bytes(data))
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert "Traceback" not in result.out + result.err
    sidecar = json.loads((tmp_path / "failed" / "Empresas6.zip.error.json").read_text())
    [failed] = sidecar["members_failed"]
    assert "uses a zip compression method ingestd cannot read" in failed["reason"]


def test_a_zip_in_an_object_store_inbox(cli, db: Db, tmp_path: Path, request) -> None:
    """The same through an s3:// inbox: members read by ranged GETs, the archive moved by
    the store (copy, then delete), the failed one beside its sidecar."""
    s3server = request.getfixturevalue("s3server")
    from tests.s3server import new_bucket

    for name, value in s3server.env().items():
        request.getfixturevalue("monkeypatch").setenv(name, value)
    bucket = new_bucket(s3server)
    cfg = config(tmp_path)
    text = cfg.read_text().replace(
        f'inbox = "{tmp_path / "inbox"}"', f'inbox = "{bucket.url("landing/inbox/")}"'
    )
    cfg.write_text(text)
    first, second = cnpj_rows(0, 700), cnpj_rows(700, 300)
    good, locked = tmp_path / "good.zip", tmp_path / "locked.zip"
    write_zip(good, {MEMBERS[0]: member_bytes(first), MEMBERS[1]: member_bytes(second),
                     "README": b"leia-me\n"})  # fmt: skip
    _encrypted_zip(locked, {MEMBERS[0]: member_bytes(cnpj_rows(5000, 3))}, "segredo")
    bucket.put("landing/inbox/Empresas0.zip", good.read_bytes())
    bucket.put("landing/inbox/Empresas1.zip", locked.read_bytes())
    result = cli("--config", cfg, "--once", "--chunk-size", 250)
    assert result.code == 1, result.err
    assert "encrypted zip member" in result.out
    assert table(db) == first + second
    assert bucket.keys("landing/inbox/") == []
    [done] = bucket.keys("landing/done/")
    assert done.endswith("/Empresas0.zip")
    assert bucket.get(done) == good.read_bytes()
    assert bucket.keys("landing/failed/") == [
        "landing/failed/Empresas1.zip",
        "landing/failed/Empresas1.zip.error.json",
    ]
    report = json.loads(bucket.get("landing/failed/Empresas1.zip.error.json"))
    assert [f["member"] for f in report["members_failed"]] == [MEMBERS[0]]


def test_files_flag_with_an_archive_and_a_table(cli, db: Db, tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    write_zip(path, {"x.csv": b"id\n1\n2\n", "y.csv": b"id\n3\n"})
    result = cli("--once", "--files", path, "--table", "t", "--mode", "append")
    assert result.code == 0, result.out + result.err
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == ["1", "2", "3"]
    assert {m["filename"] for m in db.manifest()} == {f"{path}/x.csv", f"{path}/y.csv"}
