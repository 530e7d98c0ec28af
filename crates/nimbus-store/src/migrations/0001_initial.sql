-- Nimbus store schema, version 1.
--
-- Kept portable to PostgreSQL on purpose: plain tables, TEXT and INTEGER (BIGINT there) columns,
-- JSON documents stored as TEXT, no SQLite-only types, no AUTOINCREMENT, no WITHOUT ROWID.
-- `start`/`end` are reserved words in SQL, hence `start_ms`/`end_ms`.

-- Actions, packages, triggers and rules, one JSON document each.
CREATE TABLE entities (
    namespace  TEXT    NOT NULL,
    collection TEXT    NOT NULL, -- EntityKind::collection(): actions | packages | triggers | rules
    key        TEXT    NOT NULL, -- `name` or `pkg/name`
    doc        TEXT    NOT NULL, -- JSON
    updated    INTEGER NOT NULL, -- epoch ms
    rev        INTEGER NOT NULL, -- 1 on insert, +1 on each update
    PRIMARY KEY (namespace, collection, key)
);
CREATE INDEX entities_by_updated ON entities (namespace, collection, updated DESC, key);

-- Activation records.
CREATE TABLE activations (
    namespace     TEXT    NOT NULL,
    activation_id TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    path_tail     TEXT    NOT NULL, -- `path` annotation after the namespace (`pkg/a`), else `name`
    start_ms      INTEGER NOT NULL,
    end_ms        INTEGER NOT NULL, -- 0 when the record has no end (trigger fires)
    record        TEXT    NOT NULL, -- the full Activation as JSON
    PRIMARY KEY (namespace, activation_id)
);
CREATE INDEX activations_by_start ON activations (namespace, start_ms DESC);

-- The durable queue of accepted asynchronous invocations.
CREATE TABLE invocation_queue (
    activation_id TEXT    NOT NULL PRIMARY KEY,
    namespace     TEXT    NOT NULL,
    payload       TEXT    NOT NULL, -- JSON, opaque to the store
    enqueued_at   INTEGER NOT NULL, -- epoch ms
    attempts      INTEGER NOT NULL DEFAULT 0,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed')),
    claimed_at    INTEGER           -- epoch ms, NULL while pending
);
CREATE INDEX invocation_queue_by_age ON invocation_queue (state, enqueued_at, activation_id);

-- Namespace credentials.
CREATE TABLE credentials (
    uuid      TEXT NOT NULL PRIMARY KEY,
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL
);
CREATE INDEX credentials_by_namespace ON credentials (namespace);
