"""Where ingestd's client time goes on the big CSV: a stopwatch per step, and py-spy.

    python -m bench.profile                       # append and upsert, 1,000,000 rows
    python -m bench.profile --mode upsert --rows 200000 --no-py-spy

The wall-clock breakdown comes from bench.stagetimer (ingestd in-process, steps wrapped);
the CPU breakdown from `py-spy record --format raw` (pip install py-spy), its samples
grouped by the ingestd step on their stack. Writes bench/data/profile-<mode>.{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import cases, data
from bench.cases import Bench, Sizes
from bench.server import Server, run_child

OUT = data.DATA_DIR

# The first category with a needle anywhere on the stack wins. Frames of Cython/C code
# (pyarrow's parser, uvloop) are charged to the Python frame that called them.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("encode (Arrow -> CSV bytes: write_csv, to_pybytes)", ("encode_batch",)),
    ("read: latin-1 -> UTF-8 transcoding (Python codecs)", ("IncrementalEncoder", "Incremental"
     "Decoder", "codecs.py")),
    ("read: CSV parse (pyarrow)", ("_iter_csv", "read_next_batch", "open_csv", "_read_header")),
    ("read: rebatch / normalise", ("rebatch", "_normalise", "combine_chunks")),
    ("read: Parquet", ("iter_batches", "_open_parquet")),
    ("claim: sha256 of the file", ("sha256_file",)),
    ("COPY (asyncpg, Python side)", ("copy_batch", "_pieces", "_copy_in")),
    ("merge SQL (Python side)", ("merge_batch",)),
    ("checkpoint + commit (Python side)", ("checkpoint", "Transaction.")),
    ("logging + metrics", ("_count_batch", "/logging/", "prometheus")),
    ("startup (imports)", ("_find_and_load", "exec_module")),
    ("event loop (uvloop C code: socket I/O incl. COPY data, callbacks)", ("Runner.run",)),
)  # fmt: skip


def categorise(stack: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in stack for n in needles):
            return name
    return "other"


def summarise_raw(raw: Path) -> tuple[Counter[str], int]:
    """Samples per category from py-spy's collapsed-stack output."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[categorise(stack)] += int(n)
        total += int(n)
    return counts, total


def profile(bench: Bench, mode: str, use_py_spy: bool) -> str:
    """Run ingestd once in `mode` on the big CSV; the report text."""
    cases._fresh(bench, fill="half" if mode == "upsert" else None)
    times = OUT / f"profile-{mode}.json"
    raw = OUT / f"profile-{mode}.raw.txt"
    args = [sys.executable, "-m", "bench.stagetimer", str(times),
            *cases._ingestd(bench, *cases._csv_contract(cases.TARGET, mode),
                            "--files", str(bench.files.csv))[3:]]  # fmt: skip
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if use_py_spy and Path(spy).exists():
        args = [spy, "record", "--rate", "200", "--format", "raw", "--output", str(raw),
                "--threads", "--", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": cases.child_pythonpath()}
    run = run_child(args, timeout_s=cases.TIMEOUT_S, cwd=bench.workdir, env=env)
    if run.returncode != 0:
        raise SystemExit(f"profiled run failed: {run.stderr[-3000:]}")
    result = json.loads(times.read_text())
    sec: dict[str, float] = result["seconds"]
    total = sec["process (whole run)"]
    head = f"## {mode}: {bench.sizes.rows:,} rows, wall {total:.2f} s, client CPU {run.cpu_s:.2f} s"
    lines = [head, "", "Wall clock, by step (bench.stagetimer):", ""]
    loop = (
        "COPY into target",
        "COPY into stage",
        "merge SQL",
        "manifest checkpoint",
        "BEGIN",
        "COMMIT",
    )
    in_loop = sum(sec.get(k, 0.0) for k in loop)
    per_file = sec.get("process_file (whole file)", 0.0)
    for key in loop:
        lines.append(f"- {key}: {sec.get(key, 0.0):.2f} s ({sec.get(key, 0.0) / total:.0%})")
    lines.append(
        f"- event loop waiting for the producer thread + file setup: {per_file - in_loop:.2f} s "
        f"({(per_file - in_loop) / total:.0%})"
    )
    lines.append(
        f"- outside process_file (startup, claim/sha256, pool, exit): {total - per_file:.2f} s "
        f"({(total - per_file) / total:.0%})"
    )
    for key in ("read raw segments", "read (parse + rebatch)", "encode (Arrow -> CSV bytes)"):
        lines.append(f"- producer thread, overlapped with the above: {key} {sec.get(key, 0):.2f} s")
    if raw.exists():
        counts, samples = summarise_raw(raw)
        lines += ["", f"CPU samples by step (py-spy, {samples:,} samples, all threads):", ""]
        for name, n in counts.most_common():
            lines.append(f"- {name}: {n / samples:.0%}")
    text = "\n".join(lines) + "\n"
    (OUT / f"profile-{mode}.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--mode", choices=["append", "upsert"], nargs="+", default=["append", "upsert"])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dsn")
    p.add_argument("--no-py-spy", action="store_true")
    args = p.parse_args(argv)
    sizes = Sizes(rows=args.rows, small_files=1, daemon_files=1)
    files = cases.prepare_files(sizes, big=False, log=lambda m: print(m, file=sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-profile-"))
    srv = Server(args.dsn)
    try:
        bench = Bench(srv, sizes, files, workdir)
        cases.setup_database(bench)
        for mode in args.mode:
            print(profile(bench, mode, not args.no_py_spy))
    finally:
        srv.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
