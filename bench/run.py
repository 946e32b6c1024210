"""`python -m bench.run`: generate data, start PostgreSQL, run every case N times, report.

python -m bench.run                      # full suite: 1,000,000 rows, 3 repeats
python -m bench.run --quick              # smoke run (well under a minute, no timing claims)
python -m bench.run --only psql_copy ingestd_append_csv --repeat 5
python -m bench.run --dsn postgresql://user@host/db   # another server (its tables are dropped)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench import cases, report
from bench.cases import Bench, CaseError, CaseSkipped, Measurement, Sizes
from bench.server import Server

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_OUTPUT = Path(__file__).resolve().parent / "data" / "quick.md"  # git-ignored


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small smoke run; asserts nothing on time")
    p.add_argument("--repeat", type=int, help="runs of each case (default 3; 1 with --quick)")
    p.add_argument("--rows", type=int, help="rows in the main file (default 1,000,000)")
    p.add_argument("--dsn", help="use this server instead of an embedded one (tables dropped!)")
    p.add_argument("--only", nargs="+", metavar="CASE", choices=list(cases.CASES),
                   help=f"run only these cases: {', '.join(cases.CASES)}")  # fmt: skip
    p.add_argument("--ingestd-rev", metavar="REV",
                   help="benchmark ingestd/ as of this git revision (e.g. HEAD), not the "
                   "working tree (git archive, first on PYTHONPATH)")  # fmt: skip
    p.add_argument("--output", type=Path, help="markdown report path "
                   "(default bench/results/latest.md; --quick: bench/data/quick.md)")  # fmt: skip
    return p


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(rows=args.rows or 20_000, small_files=100, daemon_files=20)
    return Sizes(rows=args.rows or 1_000_000)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    repeat = args.repeat or (1 if args.quick else 3)
    sizes = sizes_for(args)
    selected = list(args.only or [c for c in cases.CASES if c not in cases.PROBES])
    output = args.output or (QUICK_OUTPUT if args.quick else RESULTS / "latest.md")
    started = time.monotonic()

    files = cases.prepare_files(sizes, big="memory_big" in selected, log=log)
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-bench-work-"))
    global INGESTD_LABEL
    if args.ingestd_rev:
        INGESTD_LABEL = _snapshot(args.ingestd_rev, workdir / "src")
        log(f"ingestd: {INGESTD_LABEL}")
    log("starting PostgreSQL" + (" (embedded)" if args.dsn is None else " (--dsn)"))
    srv = Server(args.dsn)
    measurements: list[Measurement] = []
    failures: list[str] = []
    skipped: dict[str, str] = {}
    try:
        bench = Bench(srv, sizes, files, workdir)
        log(f"PostgreSQL {srv.version}; loading the source table")
        cases.setup_database(bench)
        _run_cases(bench, selected, repeat, measurements, failures, skipped)
    finally:
        srv.close()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = report.summarise(measurements)
    header = _header(args, sizes, repeat, files, srv, time.monotonic() - started)
    text = report.markdown(summary, header, measurements)
    if skipped:
        text += "\n## Skipped\n\n" + "\n".join(f"- {s}" for s in skipped.values()) + "\n"
    if failures:
        text += "\n## Failures\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    report.write_csv(output.with_suffix(".csv"), measurements)
    print(report.table(summary))
    print(report.goals_table(report.goals(summary)))
    for reason in skipped.values():
        print(f"SKIPPED {reason}")
    if args.quick:
        print("(--quick: a smoke run; its numbers say nothing about the goals)")
    log(f"report written to {output}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def _run_cases(
    bench: Bench,
    selected: list[str],
    repeat: int,
    measurements: list[Measurement],
    failures: list[str],
    skipped: dict[str, str],
) -> None:
    """Every selected case once per repeat, alternating; results appended to the lists."""
    for rep in range(1, repeat + 1):
        for name in selected:
            if (name in cases.ONCE and rep > 1) or name in skipped:
                continue
            log(f"repeat {rep}/{repeat}: {name}")
            try:
                m = cases.CASES[name](bench)
            except CaseSkipped as exc:
                skipped[name] = str(exc)
                log(f"SKIPPED {exc}")
                continue
            except CaseError as exc:
                failures.append(f"{name}: {exc}")
                log(f"FAILED {name}: {exc}")
                continue
            except Exception:
                failures.append(f"{name}: {traceback.format_exc()}")
                log(f"FAILED {name}:\n{traceback.format_exc()}")
                continue
            measurements.append(m)
            log(f"  {m.wall_s:.2f} s, {m.rows / m.wall_s:,.0f} rows/s {_extra(m)}")


def _extra(m: Measurement) -> str:
    return " ".join(f"{k}={v:,.3f}" for k, v in m.extra.items())


def _header(
    args: argparse.Namespace,
    sizes: Sizes,
    repeat: int,
    files: cases.Files,
    srv: Server,
    seconds: float,
) -> list[str]:
    mb = files.csv.stat().st_size / 1e6
    pq_mb = files.parquet.stat().st_size / 1e6
    where = "given by --dsn"
    if srv.embedded:
        where = "embedded; default settings but " + ", ".join(
            f"{k}={v.strip(chr(39))}" for k, v in Server.TUNING.items()
        )
    return [
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"ingestd {_git_commit()}; total bench time {seconds / 60:.1f} min",
        f"command: `python -m bench.run {' '.join(args.argv)}`".replace("  ", " "),
        f"machine: {_cpu_model()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}",
        f"PostgreSQL {srv.version} ({where}); a CHECKPOINT before every timed run",
        f"data: {sizes.rows:,} rows x 11 columns; CSV {mb:.1f} MB (`;`, all fields quoted, "
        f"latin-1, no header), Parquet {pq_mb:.1f} MB (typed); "
        f"{repeat} repeat(s), cases alternating within each repeat",
        f"small files: {sizes.small_files:,} x {sizes.small_rows} rows (--once, default "
        f"concurrency); daemon: {sizes.daemon_files} x {sizes.small_rows} rows renamed into "
        f"the inbox every {sizes.daemon_interval_s * 1000:.0f} ms",
    ]


INGESTD_LABEL: str | None = None  # set by --ingestd-rev


def _snapshot(rev: str, dest: Path) -> str:
    """Extract ingestd/ at `rev` into dest and make every child import it from there."""
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True,
                            check=True, cwd=repo).stdout.strip()  # fmt: skip
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "ingestd"],
                             capture_output=True, check=True, cwd=repo).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # Bytecode, as an install leaves it (pip compiles at install): under PYTHONDONTWRITEBYTECODE
    # every ingestd child compiled all of ingestd from source again, ~0.2 s of CPU a start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "ingestd")], check=True)
    # PYTHONPATH comes before the editable install's finder, so children import the snapshot.
    os.environ["PYTHONPATH"] = str(dest)
    return f"commit {commit} (--ingestd-rev {rev}, working tree not used)"


def _git_commit() -> str:
    if INGESTD_LABEL is not None:
        return INGESTD_LABEL
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "ingestd"], capture_output=True,
                           text=True, check=False, cwd=Path(__file__).parent)  # fmt: skip
    return (
        "commit "
        + out.stdout.strip()
        + (" + uncommitted changes in ingestd/" if dirty.stdout else "")
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
