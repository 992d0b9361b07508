"""PostgreSQL storage, for several nodes sharing one database: the schema and its
migrations, and connections to it. (The run store itself builds on these.)"""

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
