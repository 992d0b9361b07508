"""The database's tables, and how a database gets them: versioned migrations.

Each release ships an ordered list of migrations, ``(version, description,
SQL)``; a database records in ``schema_migrations`` which versions it has had,
and when. At start a node applies the ones it lacks, in order.

Nodes may start together, so the whole of it (creating ``schema_migrations``,
reading it, applying, recording) is one transaction under a transaction-level
advisory lock: the second node waits for the first to commit, then finds
everything applied; a node killed halfway leaves nothing (the transaction
rolls back, the lock goes with its connection). A database whose schema is
newer than this release knows is refused: an older release cannot know what
the newer tables mean, and writing to them could undo what they promise.

A migration, once released, is never edited: a change is a new migration.
"""

from __future__ import annotations

from importlib import metadata
from typing import NamedTuple

import psycopg

#: The advisory lock taken while migrating: any bigint, the same in every release ("uflow").
MIGRATION_LOCK = 0x75666C6F77


class Migration(NamedTuple):
    version: int
    description: str
    sql: str


class SchemaTooNew(RuntimeError):
    """The database has migrations this release does not know; the message is one line."""


class SchemaBusy(RuntimeError):
    """Another process held the migration lock too long; the message is one line."""


INITIAL_SCHEMA = """
-- Nodes: the userflow processes sharing this database. A node renews its
-- row every second; whether it is alive is judged by the database's clock
-- (now() - heartbeat_at), never by comparing two machines' clocks.
CREATE TABLE nodes (
    id           text PRIMARY KEY,  -- --node-id: host name and port unless given
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Runs: one row per run. The document is the whole snapshot, the same JSON
-- a run file of the data dir holds; the other columns are copies of what
-- queries filter or sort on, and the fencing a checkpoint needs:
--   UPDATE runs ... WHERE id = $1 AND owner = $node AND epoch = $e AND version = $v
-- touches no row once the run has moved on or been taken over, and the
-- writer stops. A run is owned only while a node executes it: a waiting
-- run has no owner and next_wake_at set to its earliest deadline, so a dead
-- node leaves behind only the runs it was executing. No foreign key to
-- nodes: a run owned by a node with no row is simply a dead node's run.
CREATE TABLE runs (
    id           text PRIMARY KEY,    -- wf_...: ids sort by creation time, so lists page by id
    workflow     text NOT NULL,
    definition   integer NOT NULL,    -- the version of the workflow the run follows
    format       integer NOT NULL,    -- the layout of document, for migrations of it
    status       text NOT NULL CHECK (status IN ('RUNNING', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    document     jsonb NOT NULL,
    version      bigint NOT NULL,     -- raised by every checkpoint
    owner        text,                -- the node executing it; NULL while it waits or has ended
    epoch        bigint NOT NULL DEFAULT 0,  -- raised by every claim: an older claim's writes are refused
    next_wake_at timestamptz,         -- the earliest timer (retry, reminder, expiry); NULL if none
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
-- What every node's poller asks: the unowned runs whose timer is due. Partial,
-- so finished and executing runs cost the index nothing.
CREATE INDEX runs_due ON runs (next_wake_at) WHERE owner IS NULL AND next_wake_at IS NOT NULL;
-- The runs a dead node was executing, for takeover.
CREATE INDEX runs_owner ON runs (owner) WHERE owner IS NOT NULL;
-- Lists by status ("retry every failed run", the dashboard's filters), newest first.
CREATE INDEX runs_status ON runs (status, id);

-- The timeline: a table of its own so a checkpoint appends only its new
-- entries instead of rewriting a document that grows with every attempt.
-- seq is the run's own entry number: appends are ordered without a shared
-- counter, and writing an entry twice is a key violation, not a duplicate.
CREATE TABLE timeline (
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    integer NOT NULL,
    entry  jsonb NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Lookup keys: the workflow's own keys (a user's address, its user id, the
-- hashes of its verification tokens) to the run holding them, so that any
-- node finds a click's run without an index of its own in memory. A key
-- names one run at a time: a later run takes it over (a new signup after
-- an expired one), as the in-memory index does.
CREATE TABLE lookup_keys (
    kind   text NOT NULL,  -- 'email', 'user', 'token'
    key    text NOT NULL,
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, key)
);
CREATE INDEX lookup_keys_run ON lookup_keys (run_id);

-- Secrets every node must share: the key verification tokens are derived
-- from, so a link sent by one node verifies on any. Created once with
-- INSERT ... ON CONFLICT DO NOTHING and read back: nodes starting together agree.
CREATE TABLE secrets (
    name       text PRIMARY KEY,  -- 'tokens'
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Operator accounts and their sign-in sessions, as DATA/operators.json
-- keeps them: only SHA-256 hashes of tokens and session ids, never the
-- secrets (256-bit random values: a slow hash would add nothing).
CREATE TABLE operator_accounts (
    name       text PRIMARY KEY,
    role       text NOT NULL CHECK (role IN ('viewer', 'operator')),
    token_hash text NOT NULL UNIQUE,  -- a token is looked up by its hash
    created_at timestamptz NOT NULL
);
-- No foreign key to the accounts: the account from USERFLOW_OPERATOR_TOKEN
-- ('env') is never stored, yet signs in; a session counts only while its
-- account exists, which is checked when it is used.
CREATE TABLE operator_sessions (
    id_hash    text PRIMARY KEY,
    name       text NOT NULL,
    expires_at timestamptz NOT NULL
);
-- An account's sessions (ending them with the account, keeping each
-- account's newest few) and the expired ones to prune.
CREATE INDEX operator_sessions_name ON operator_sessions (name, expires_at);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);

-- Webhooks. A URL is sent the events from when it was first configured on;
-- this is that moment, per URL.
CREATE TABLE webhook_urls (
    url   text PRIMARY KEY,
    since timestamptz NOT NULL
);
-- Each event to each URL, and what became of it. The event itself is the
-- run's (written in the run's commit: the transactional outbox); a delivery
-- is made from it. (run_id, url) is a lane delivered in order by number,
-- the event's place in its run: unique, so two nodes noticing the same
-- event make one delivery, and a lane's highest number says how far its
-- events have been queued.
CREATE TABLE webhook_deliveries (
    id         text PRIMARY KEY,  -- dlv_...
    event_id   text NOT NULL,     -- sent as webhook-id, the same on every attempt
    run_id     text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    url        text NOT NULL,
    number     integer NOT NULL,
    user_id    text,
    type       text NOT NULL,     -- user.created, user.verified, ...
    status     text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts   jsonb NOT NULL DEFAULT '[]',  -- [{at, status, error, durationMs}]
    next_at    timestamptz,       -- when a pending delivery is tried next
    created_at timestamptz NOT NULL,
    -- The body as signed. Text, not jsonb: jsonb would reorder its keys and
    -- the signature would no longer match. Dropped once delivered.
    payload    text,
    manual     boolean NOT NULL DEFAULT false,  -- an operator's retry of a failed one
    resent     jsonb NOT NULL DEFAULT '[]',     -- [{at, by}] of each operator's retry
    UNIQUE (run_id, url, number)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, id);

-- The event stream (/api/events): every node appends what its runs did and
-- tails the table, so a client connected to any node sees every node's
-- events, and the global seq is an id that resumes (Last-Event-ID) on any
-- node. Sequence values commit out of order: a reader holds its cursor
-- behind a gap for a moment. frame is the SSE text after the id line
-- ("event: ...\\ndata: ...\\n\\n"), written out as it is. Old rows are pruned
-- by seq (created_at grows with it, so no index on it is needed).
CREATE TABLE events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    frame      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

CATALOG = """
-- The catalog: what lists, filters, counts and lookups read, so that no node
-- keeps every run in memory. summary is what a list shows of the run, as
-- the engine describes it (NULL until a node has described the run: a run
-- imported, or stored before this migration); run_facets the values lists
-- filter and count by (status, the user's status, ...), one row each, so
-- "newest first with status S after cursor C" is a walk of one index.
ALTER TABLE runs ADD COLUMN summary jsonb;
CREATE INDEX runs_undescribed ON runs (id) WHERE summary IS NULL;
CREATE INDEX runs_changed ON runs (updated_at);
CREATE TABLE run_facets (
    name   text NOT NULL,
    value  text NOT NULL,
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    PRIMARY KEY (name, value, run_id)
);
CREATE INDEX run_facets_run ON run_facets (run_id);

-- How many runs have each facet value, kept by a trigger in the transaction
-- that changes the facets: counting a million runs reads a few rows.
CREATE TABLE run_counts (
    name  text NOT NULL,
    value text NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (name, value)
);
CREATE FUNCTION run_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_counts VALUES (NEW.name, NEW.value, 1)
        ON CONFLICT (name, value) DO UPDATE SET n = run_counts.n + 1;
    ELSE
        UPDATE run_counts SET n = n - 1 WHERE name = OLD.name AND value = OLD.value;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER run_counts_follow AFTER INSERT OR DELETE ON run_facets
    FOR EACH ROW EXECUTE FUNCTION run_counts_follow();
"""

DELIVERY_CLAIMS = """
-- Several nodes deliver webhooks from one table, each pending delivery
-- attempted by one node at a time. A node claims a lane's head (the lowest
-- pending number of a (run_id, url) pair; an operator's retry stands apart)
-- with SELECT ... FOR UPDATE SKIP LOCKED, until claimed_until, judged by the
-- database's clock; another node may claim it once that has passed (its
-- node died). claim counts the claims of the row, and an outcome is written
--   UPDATE webhook_deliveries ... WHERE id = $1 AND claimed_by = $node AND claim = $n
-- so a node that was paused past its claim, and woke up, writes nothing.
-- seq is the order deliveries were made in: the list pages by it, newest first.
ALTER TABLE webhook_deliveries
    ADD COLUMN claimed_by    text,
    ADD COLUMN claimed_until timestamptz,
    ADD COLUMN claim         bigint NOT NULL DEFAULT 0,
    ADD COLUMN seq           bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX webhook_deliveries_seq ON webhook_deliveries (seq);
CREATE INDEX webhook_deliveries_listed ON webhook_deliveries (status, seq);
DROP INDEX webhook_deliveries_status;
"""

NODES = """
-- Many nodes on one database. A node registers with an incarnation (a random
-- value of each process): a process that finds its id held by a live node
-- waits for that node's heartbeat to lapse, and a node whose heartbeat no
-- longer matches its incarnation knows another process took its id, and
-- stops. stopped_at is set by a clean stop: its runs are free at once.
ALTER TABLE nodes ADD COLUMN incarnation text NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN address text;  -- the URL the node serves on, for the nodes panel
ALTER TABLE nodes ADD COLUMN stopped_at timestamptz;

-- run_counts is kept by the commit itself, in one statement that changes the
-- counts in a fixed order. The per-row trigger changed them in the order rows
-- came, so two nodes committing at once (one run going RUNNING to WAITING, the
-- other WAITING to RUNNING) could each hold a count the other needed: a deadlock.
DROP TRIGGER run_counts_follow ON run_facets;
DROP FUNCTION run_counts_follow();
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, timeline, lookup keys, secrets, operators, webhooks, events, nodes", INITIAL_SCHEMA),
    Migration(2, "the catalog: run summaries, facets and their counts", CATALOG),
    Migration(3, "webhook deliveries claimed by one node at a time, listed in the order made", DELIVERY_CLAIMS),
    Migration(4, "nodes: incarnations, addresses, clean stops; run counts kept in order", NODES),
)


def _release() -> str:
    try:
        return metadata.version("userflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def migrate(connection: psycopg.Connection, migrations: tuple[Migration, ...] = MIGRATIONS, lock_timeout: float = 60.0) -> list[int]:
    """Bring the database's schema up to date; the versions applied now (none if it was).

    ``connection`` must be outside a transaction. Raises SchemaTooNew, leaving
    the database as it was, if it has a version beyond ``migrations``, and
    SchemaBusy if another node has held the migration lock for ``lock_timeout`` seconds.
    """
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions) or versions != sorted(versions):
        raise ValueError("migrations must have distinct, ascending versions")
    if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("migrate needs a connection outside any transaction")
    try:
        with connection.transaction():
            return _migrate(connection, migrations, lock_timeout)
    except psycopg.errors.LockNotAvailable:
        raise SchemaBusy(f"another process has been migrating the schema for {lock_timeout:g} s; is it stuck?") from None


def _migrate(connection: psycopg.Connection, migrations: tuple[Migration, ...], lock_timeout: float) -> list[int]:
    # Read committed, whatever the connection's default: each statement after the
    # lock must see what a node that held the lock before us committed.
    connection.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
    connection.execute(f"SET LOCAL lock_timeout = '{round(lock_timeout * 1000)}ms'")
    connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    connection.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version     integer PRIMARY KEY,
               description text NOT NULL,
               release     text NOT NULL,  -- the userflow release that applied it
               applied_at  timestamptz NOT NULL DEFAULT now()
           )"""
    )
    applied: dict[int, str] = dict(connection.execute("SELECT version, release FROM schema_migrations").fetchall())
    known = {migration.version for migration in migrations}
    if any(version not in known for version in applied):
        top = max(applied)
        raise SchemaTooNew(
            f"the database's schema is at version {top} (applied by userflow {applied[top]}); "
            f"this release (userflow {_release()}) knows versions up to {max(known)}: run a release at least as new"
        )
    done = []
    for migration in migrations:
        if migration.version not in applied:
            connection.execute(migration.sql)  # no parameters: several statements in one go
            connection.execute(
                "INSERT INTO schema_migrations (version, description, release) VALUES (%s, %s, %s)",
                (migration.version, migration.description, _release()),
            )
            done.append(migration.version)
    return done
