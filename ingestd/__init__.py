"""ingestd: load CSV and Parquet files dropped in a directory into PostgreSQL, exactly once."""

__version__ = "0.1.0"
