"""Medians per case, the goals of issue #14, and the markdown / CSV reports."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cases import Measurement

# Which limit each case is compared with (time per row, case / limit: lower is better).
_APPEND = (
    "psql_copy", "psql_halves2", "asyncpg_raw_copy", "adbc_csv", "adbc_parquet",
    "duckdb_parquet", "duckdb_csv", "ingestd_append_default", "ingestd_append_csv",
    "ingestd_split2", "ingestd_parquet", "ingestd_parquet_text", "ingestd_concurrency2",
    "naive_tuples", "memory_big", "ingestd_parquet_1conn",
    "pgpq_parquet", "pgpq_parquet_2conn", "pgpq_csv_text", "pgpq_csv_text_2conn",
)  # fmt: skip
_UPSERT = (
    "sql_upsert", "asyncpg_raw_upsert", "ingestd_upsert_csv", "ingestd_upsert_c1",
    "ingestd_upsert_bad", "ingestd_rerun_csv",
)  # fmt: skip
LIMIT_OF = {**dict.fromkeys(_APPEND, "psql_copy"), **dict.fromkeys(_UPSERT, "sql_upsert")}

# What each case is, for the table (bench/README.md says more).
LABEL = {
    "psql_copy": "`psql \\copy` (the append limit)",
    "psql_halves2": "two `psql \\copy` on the halves, two connections",
    "asyncpg_raw_copy": "raw CSV bytes -> asyncpg `copy_to_table`, one connection",
    "adbc_csv": "ADBC `adbc_ingest` from pyarrow's CSV reader (binary COPY)",
    "adbc_parquet": "ADBC `adbc_ingest` from Parquet",
    "duckdb_parquet": "DuckDB postgres extension, `read_parquet`",
    "duckdb_csv": "DuckDB postgres extension, `read_csv`",
    "ingestd_append_default": "**ingestd append CSV, defaults**",
    "ingestd_append_csv": "ingestd append CSV `--concurrency 1`",
    "ingestd_split2": "ingestd append CSV `--concurrency 2` (one file split in 2)",
    "ingestd_parquet": "**ingestd append Parquet `--preserve-types`**, defaults",
    "ingestd_parquet_text": "ingestd append Parquet `--preserve-types --binary-copy false`",
    "ingestd_parquet_1conn": "ingestd append Parquet, one connection (`--split-mb 0`)",
    "ingestd_concurrency2": "ingestd, the two halves as two files, `--concurrency 2`",
    "naive_tuples": "naive: csv.reader tuples -> text stage -> cast",
    "memory_big": "ingestd append CSV, defaults, 4x the rows",
    "sql_upsert": "SQL-only upsert via psql (the upsert limit)",
    "asyncpg_raw_upsert": "raw CSV bytes -> temp -> `ON CONFLICT`, one transaction (asyncpg)",
    "ingestd_upsert_csv": "**ingestd upsert, half of the keys exist**",
    "ingestd_upsert_c1": "ingestd upsert, `--concurrency 1` (no relay)",
    "ingestd_upsert_bad": "ingestd upsert, 1 row in 1,000 does not cast (`--max-bad-rows 1%`)",
    "ingestd_rerun_csv": "ingestd re-run of the unchanged file (`--no-resume`)",
    "small_files": "ingestd `--once`, many small files, defaults",
    "small_files_c2": "ingestd `--once`, many small files, `--concurrency 2`",
    "small_files_c1": "ingestd `--once`, many small files, `--concurrency 1`",
    "daemon_latency": "ingestd daemon, files renamed in one by one",
    "instances_1": "1 daemon on the small-file inbox",
    "instances_2": "2 daemons share the small-file inbox",
    "instances_3": "3 daemons share the small-file inbox",
    "pgpq_parquet": "probe: Parquet -> pgpq -> asyncpg binary COPY",
    "pgpq_parquet_2conn": "probe: the same, a COPY per 100k-row batch, two connections",
    "pgpq_csv_text": "probe: CSV as text -> pgpq -> binary COPY to a text stage -> cast",
    "pgpq_csv_text_2conn": "probe: the same, two connections",
}


@dataclass(frozen=True)
class Summary:
    """The medians of one case over its runs."""

    case: str
    runs: int
    rows: int
    wall_s: float
    mb: float
    client_cpu_s: float | None
    server_cpu_s: float | None
    peak_rss_mb: float | None
    extra: dict[str, float]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.mb / self.wall_s if self.wall_s else 0.0


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(measurements: Sequence[Measurement]) -> dict[str, Summary]:
    """Median of every number per case (peak RSS: the highest seen), in first-run order."""
    by_case: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_case.setdefault(m.case, []).append(m)
    out = {}
    for case, runs in by_case.items():
        keys = sorted({k for m in runs for k in m.extra})
        rss = [m.peak_rss_mb for m in runs if m.peak_rss_mb is not None]
        out[case] = Summary(
            case=case,
            runs=len(runs),
            rows=runs[0].rows,
            wall_s=statistics.median(m.wall_s for m in runs),
            mb=runs[0].nbytes / 1e6,
            client_cpu_s=_median([m.client_cpu_s for m in runs]),
            server_cpu_s=_median([m.server_cpu_s for m in runs]),
            peak_rss_mb=max(rss) if rss else None,
            extra={k: statistics.median(m.extra[k] for m in runs if k in m.extra) for k in keys},
        )
    return out


def time_ratio(s: dict[str, Summary], case: str) -> float | None:
    """Time per row of the case over time per row of its limit (1.00x: as fast as the limit)."""
    limit = LIMIT_OF.get(case)
    if limit is None or limit not in s or case not in s or not s[case].rows_per_s:
        return None
    return s[limit].rows_per_s / s[case].rows_per_s


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def goals(s: dict[str, Summary]) -> list[Goal]:
    """Issue #14's goals, judged on this run's medians."""
    out: list[Goal] = []

    def ratio_goal(name: str, case: str, limit: float, of: str) -> None:
        r = time_ratio(s, case)
        out.append(
            Goal(name, f"<= {limit:.2f}x the time of {of}",
                 "-" if r is None else f"{r:.2f}x", None if r is None else r <= limit)
        )  # fmt: skip

    def rss_goal(name: str, case: str) -> None:
        rss = s[case].peak_rss_mb if case in s else None
        out.append(Goal(name, "<= 150 MB", _fmt(rss, ".0f", " MB"),
                        None if rss is None else rss <= 150))  # fmt: skip

    ratio_goal("1. Parquet --preserve-types, defaults", "ingestd_parquet", 0.75, "psql \\copy")
    ratio_goal("2. CSV append, defaults", "ingestd_append_default", 0.65, "psql \\copy")
    ratio_goal("2. CSV append, --concurrency 1", "ingestd_append_csv", 0.85, "psql \\copy")
    ratio_goal("3. upsert, half of the keys exist", "ingestd_upsert_csv", 0.90,
               "the SQL-only upsert")  # fmt: skip
    if "ingestd_rerun_csv" in s:
        e = s["ingestd_rerun_csv"].extra
        upd, ins = e.get("n_tup_upd", -1), e.get("n_tup_ins", -1)
        out.append(
            Goal(
                "3. re-run of the unchanged file writes nothing",
                "n_tup_upd = n_tup_ins = 0",
                f"n_tup_upd {upd:,.0f}, n_tup_ins {ins:,.0f}",
                upd == 0 and ins == 0,
            )
        )
    rss_goal("4. peak RSS, CSV at defaults", "ingestd_append_default")
    rss_goal("4. peak RSS, Parquet at defaults", "ingestd_parquet")
    if "memory_big" in s and "ingestd_append_default" in s:
        small, big = s["ingestd_append_default"].peak_rss_mb, s["memory_big"].peak_rss_mb
        if small and big:
            growth = big / small - 1
            out.append(Goal(f"4. memory flat ({s['memory_big'].rows:,} vs "
                            f"{s['ingestd_append_default'].rows:,} rows, defaults)",
                            "peak RSS within 10%", f"{big:.0f} MB vs {small:.0f} MB "
                            f"({growth:+.1%})", abs(growth) <= 0.10))  # fmt: skip
    if "small_files" in s:
        fps = s["small_files"].extra["files_per_s"]
        out.append(Goal("5. many small files (--once, defaults)", ">= 500 files/s",
                        f"{fps:,.0f} files/s", fps >= 500))  # fmt: skip
    if "daemon_latency" in s:
        e = s["daemon_latency"].extra
        out.append(Goal("5. daemon latency p99", "< 0.30 s", f"{e['p99_s']:.3f} s",
                        e["p99_s"] < 0.3))  # fmt: skip
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _notes(x: Summary) -> str:
    e = x.extra
    parts = []
    if "n_tup_upd" in e:
        parts.append(f"n_tup_ins {e['n_tup_ins']:,.0f}, n_tup_upd {e['n_tup_upd']:,.0f}")
    if "rows_rejected" in e:
        parts.append(f"{e['rows_rejected']:,.0f} rows set aside to ingestion_rejects")
    if "instances" in e:
        parts.append(
            f"{e['instances']:.0f} instance(s), {e['files']:,.0f} files: "
            f"{e['files_per_s']:,.0f} files/s; files per instance {e['share_min']:,.0f}"
            f"-{e['share_max']:,.0f}"
        )
    elif "files_per_s" in e:
        parts.append(
            f"{e['files']:,.0f} files: {e['files_per_s']:,.0f} files/s end to end, "
            f"{e['files_per_s_loading']:,.0f} files/s first claim to last success"
        )
        if "server_ms_per_file" in e and "client_ms_per_file" in e:
            parts.append(
                f"CPU a file: client {e['client_ms_per_file']:.2f} ms, "
                f"server {e['server_ms_per_file']:.2f} ms"
            )
    if "p50_s" in e:
        parts.append(
            f"{e['files']:,.0f} files: p50 {e['p50_s']:.3f} s, p99 {e['p99_s']:.3f} s, "
            f"max {e['max_s']:.3f} s"
        )
    return "; ".join(parts)


def table(s: dict[str, Summary]) -> str:
    """The markdown table of medians."""
    head = (
        "| case | method | runs | rows | wall s | rows/s | MB/s | time vs limit | client CPU s "
        "| server CPU s | peak RSS MB | notes |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for x in s.values():
        ratio = time_ratio(s, x.case)
        limit = LIMIT_OF.get(x.case, "")
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x {limit}"
        lines.append(
            f"| {x.case} | {LABEL.get(x.case, '')} | {x.runs} | {x.rows:,} | {x.wall_s:.2f} "
            f"| {x.rows_per_s:,.0f} "
            f"| {x.mb_per_s:.1f} | {ratio_text} | {_fmt(x.client_cpu_s, '.2f')} "
            f"| {_fmt(x.server_cpu_s, '.2f')} | {_fmt(x.peak_rss_mb, '.0f')} | {_notes(x)} |"
        )
    return head + "\n".join(lines) + "\n"


def goals_table(gs: Sequence[Goal]) -> str:
    head = "| goal | target | measured | result |\n| --- | --- | --- | --- |\n"
    verdict = {True: "met", False: "**not met**", None: "not measured"}
    return head + "\n".join(
        f"| {g.name} | {g.target} | {g.measured} | {verdict[g.met]} |" for g in gs
    ) + "\n"  # fmt: skip


def markdown(s: dict[str, Summary], header: Sequence[str], runs: Sequence[Measurement]) -> str:
    """The whole report: context, medians, goals, every run."""
    raw = ["| repeat | case | wall s | client CPU s | server CPU s | peak RSS MB |",
           "| ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    seen: dict[str, int] = {}
    for m in runs:
        seen[m.case] = seen.get(m.case, 0) + 1
        raw.append(
            f"| {seen[m.case]} | {m.case} | {m.wall_s:.2f} | {_fmt(m.client_cpu_s, '.2f')} "
            f"| {_fmt(m.server_cpu_s, '.2f')} | {_fmt(m.peak_rss_mb, '.0f')} |"
        )
    return (
        "# ingestd benchmark results\n\n"
        + "\n".join(f"- {line}" for line in header)
        + "\n\n## Medians\n\n"
        + table(s)
        + "\ntime vs limit: the case's time per row over its limit's (psql \\copy for loads, "
        "the SQL-only upsert for upserts), medians of the same run; 1.00x is as fast as "
        "the limit, lower is better.\n\n## Goals (issue #14)\n\n"
        + goals_table(goals(s))
        + "\n## Every run\n\n"
        + "\n".join(raw)
        + "\n"
    )


def write_csv(path: Path, runs: Sequence[Measurement]) -> None:
    """Every run, one row each (bench/results/*.csv is git-ignored)."""
    keys = sorted({k for m in runs for k in m.extra})
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "rows", "bytes", "wall_s", "client_cpu_s", "server_cpu_s",
                    "peak_rss_mb", *keys])  # fmt: skip
        for m in runs:
            extra = [m.extra.get(k, "") for k in keys]
            w.writerow([m.case, m.rows, m.nbytes, f"{m.wall_s:.4f}", m.client_cpu_s,
                        m.server_cpu_s, m.peak_rss_mb, *extra])  # fmt: skip
