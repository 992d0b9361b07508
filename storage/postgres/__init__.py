"""PostgreSQL storage, for several nodes sharing one database: the schema and its
migrations, connections to it, and the run store (runs.py) built on them."""

from userflow.storage.postgres.connect import DatabaseUnavailable, check_reachable, open_pool
from userflow.storage.postgres.schema import MIGRATIONS, Migration, SchemaBusy, SchemaTooNew, migrate

__all__ = [
    "DatabaseUnavailable",
    "MIGRATIONS",
    "Migration",
    "SchemaBusy",
    "SchemaTooNew",
    "check_reachable",
    "migrate",
    "open_pool",
]
