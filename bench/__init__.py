"""ingestd benchmarks against `psql \\copy` and a SQL-only upsert (issue #8).

Run `python -m bench.run` (or `make bench`); `--quick` is a smoke run. See bench/README.md.
"""
