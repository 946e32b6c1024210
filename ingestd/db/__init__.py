"""The database layer: the only package that imports asyncpg or holds SQL text."""
