"""A kill -9 in the middle of a zip member: the member's committed batches stay, the
resume re-reads its stream past them, every row lands once, the archive then moves."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.daemon import wait_for
from tests.helpers import log_events, run_measuring_peak
from tests.integration.test_zip import MEMBERS, cnpj_rows, config, member_bytes, write_zip
from tests.pg import Db

pytestmark = pytest.mark.fault

FIRST, SECOND = 40_000, 10_000


def _rows_committed(db: Db) -> int:
    try:
        return int(db.val("SELECT coalesce(sum(rows), 0) FROM ingestion_manifest"))
    except asyncpg.UndefinedTableError:
        return 0


def test_kill_9_mid_member_then_resume_loads_every_row_once(
    dsn: str, db: Db, tmp_path: Path
) -> None:
    cfg = config(tmp_path, mode="append")  # append: a row loaded twice would show
    inbox = tmp_path / "inbox"
    members = {
        MEMBERS[0]: member_bytes(cnpj_rows(0, FIRST)),
        MEMBERS[1]: member_bytes(cnpj_rows(FIRST, SECOND)),
        "README": b"leia-me\n",
    }
    write_zip(inbox / "Empresas0.zip", members)
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--config", str(cfg), "--dsn", dsn,
        "--chunk-size", "500", "--concurrency", "1", "--metrics-addr", "off",
        "--log-format", "json", "--log-level", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _rows_committed(db) >= FIRST // 3 or proc.poll() is not None,
                 timeout_s=60, what="a third of the first member")  # fmt: skip
        time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(10)
    rows = {m["filename"]: m for m in db.manifest()}
    first = rows[f"Empresas0.zip/{MEMBERS[0]}"]
    assert first["status"] != "success" and 0 < first["rows"] < FIRST  # killed mid-member
    assert (inbox / "Empresas0.zip").is_file()  # the archive stays until every member ended

    # Resumed with another chunk size and concurrency: the committed rows are skipped all the same.
    again = [*cmd, "--chunk-size", "777", "--concurrency", "2"]
    done = subprocess.run(again, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = log_events(done.stderr, "file_resumed")
    assert [e["file"] for e in resumed] == [f"Empresas0.zip/{MEMBERS[0]}"]
    total = FIRST + SECOND
    assert db.val("SELECT count(*) FROM empresas") == total
    assert db.val("SELECT count(DISTINCT cnpj_basico) FROM empresas") == total
    assert {m["status"] for m in db.manifest()} == {"success"}
    assert {m["rows"] for m in db.manifest()} == {FIRST, SECOND}
    assert not (inbox / "Empresas0.zip").exists()
    assert [p.name for p in (tmp_path / "done").rglob("*.zip")] == ["Empresas0.zip"]


# Peak RSS as the child itself sees it (Linux keeps a peak across fork and exec: the
# archive is written by another child, so the test process stays small).
_WRITE = (
    "import sys, zipfile\n"
    "rows = int(sys.argv[2])\n"
    "with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as zf:\n"
    "    with zf.open(sys.argv[3], 'w', force_zip64=True) as out:\n"
    "        for start in range(0, rows, 10000):\n"
    '            out.write(b\'\'.join(b\'"%08d";"%s";"2062";"1,00"\\n\' % (i, b\'a\' * 50)\n'
    "                               for i in range(start, min(rows, start + 10000))))\n"
)


@pytest.mark.slow
def test_memory_stays_flat_on_a_200_mb_member(dsn: str, db: Db, tmp_path: Path) -> None:
    """A zip64 member of 200 MB (a bomb: its declared size is far beyond memory_limit_mb =
    64) is hashed and loaded as a stream: the peak RSS stays far below its size."""
    rows = 2_700_000  # 76 bytes a row
    cfg = config(tmp_path, mode="append")
    archive = tmp_path / "inbox" / "Empresas9.zip"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", _WRITE, str(archive), str(rows), MEMBERS[0]],
                   check=True, timeout=300, cwd=root)  # fmt: skip
    cmd = [
        "--once", "--config", str(cfg), "--dsn", dsn, "--memory-limit-mb", "64",
        "--chunk-size", "100000", "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip
    peak = run_measuring_peak(cmd, timeout=600)
    assert db.val("SELECT count(*) FROM empresas") == rows
    assert peak < 350 * (1 << 20), peak
    assert [p.name for p in (tmp_path / "done").rglob("*.zip")] == ["Empresas9.zip"]
