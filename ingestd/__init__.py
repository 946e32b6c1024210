"""ingestd: load CSV and Parquet files dropped in a directory into PostgreSQL, exactly once.

The version is kept equal to pyproject.toml's (tests/unit/test_review_checklist.py).
"""

__version__ = "0.1.0"
