"""ingestd: load CSV, NDJSON and Parquet files from a folder or a bucket into PostgreSQL, once.

The version is kept equal to pyproject.toml's (tests/unit/test_review_checklist.py).
"""

__version__ = "0.1.0"
