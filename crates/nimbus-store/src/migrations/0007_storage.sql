-- Install state, storage accounting and retention (issue 13).

-- The installation: one row, written when the schema is first created. A database without it
-- is not an installation (see sqlite/integrity.rs). `seal` counts durable "seal" commits; the
-- latest value is also written to the side file `<db>.seal` after each, so a start can tell a
-- database that lost commits (a deleted or truncated WAL) from an intact one.
CREATE TABLE meta (
    id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    installation_id TEXT    NOT NULL, -- 32 hex characters
    created         INTEGER NOT NULL, -- epoch ms
    seal            INTEGER NOT NULL DEFAULT 0
);
INSERT INTO meta (id, installation_id, created)
VALUES (1, lower(hex(randomblob(16))), CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

-- Bytes each namespace stores (charged against its quota) and its number of activation
-- records (for count retention). Kept by the triggers below in the writing transaction.
CREATE TABLE namespace_usage (
    namespace   TEXT    NOT NULL PRIMARY KEY,
    bytes       INTEGER NOT NULL DEFAULT 0,
    activations INTEGER NOT NULL DEFAULT 0
);

-- Per-namespace overrides of the server's storage limits (NULL: the server's value).
CREATE TABLE namespace_limits (
    namespace   TEXT    NOT NULL PRIMARY KEY,
    quota_bytes INTEGER,
    max_age_ms  INTEGER,
    max_count   INTEGER
);

-- Rebuild the counters from what is stored.
INSERT INTO namespace_usage (namespace, bytes, activations)
SELECT namespace, SUM(bytes), SUM(n) FROM (
    SELECT namespace, SUM(octet_length(record)) AS bytes, COUNT(*) AS n FROM activations GROUP BY namespace
    UNION ALL
    SELECT namespace, SUM(octet_length(doc)), 0 FROM entities GROUP BY namespace
    UNION ALL
    SELECT namespace, SUM(octet_length(payload)), 0 FROM invocation_queue GROUP BY namespace
    UNION ALL
    SELECT namespace, SUM(octet_length(event) + octet_length(details)), 0 FROM dead_letters GROUP BY namespace
) GROUP BY namespace;

-- One trigger per charged write. `UPDATE OF <column>`: a queue claim (which changes only the
-- state) fires nothing.
CREATE TRIGGER usage_activation_insert AFTER INSERT ON activations BEGIN
    INSERT INTO namespace_usage (namespace, bytes, activations)
    VALUES (NEW.namespace, octet_length(NEW.record), 1)
    ON CONFLICT (namespace) DO UPDATE SET bytes = bytes + excluded.bytes, activations = activations + 1;
END;
CREATE TRIGGER usage_activation_update AFTER UPDATE OF record ON activations BEGIN
    UPDATE namespace_usage SET bytes = bytes + octet_length(NEW.record) - octet_length(OLD.record)
    WHERE namespace = NEW.namespace;
END;
CREATE TRIGGER usage_activation_delete AFTER DELETE ON activations BEGIN
    UPDATE namespace_usage SET bytes = bytes - octet_length(OLD.record), activations = activations - 1
    WHERE namespace = OLD.namespace;
END;

CREATE TRIGGER usage_entity_insert AFTER INSERT ON entities BEGIN
    INSERT INTO namespace_usage (namespace, bytes) VALUES (NEW.namespace, octet_length(NEW.doc))
    ON CONFLICT (namespace) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER usage_entity_update AFTER UPDATE OF doc ON entities BEGIN
    UPDATE namespace_usage SET bytes = bytes + octet_length(NEW.doc) - octet_length(OLD.doc)
    WHERE namespace = NEW.namespace;
END;
CREATE TRIGGER usage_entity_delete AFTER DELETE ON entities BEGIN
    UPDATE namespace_usage SET bytes = bytes - octet_length(OLD.doc) WHERE namespace = OLD.namespace;
END;

CREATE TRIGGER usage_queue_insert AFTER INSERT ON invocation_queue BEGIN
    INSERT INTO namespace_usage (namespace, bytes) VALUES (NEW.namespace, octet_length(NEW.payload))
    ON CONFLICT (namespace) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER usage_queue_update AFTER UPDATE OF payload ON invocation_queue BEGIN
    UPDATE namespace_usage SET bytes = bytes + octet_length(NEW.payload) - octet_length(OLD.payload)
    WHERE namespace = NEW.namespace;
END;
CREATE TRIGGER usage_queue_delete AFTER DELETE ON invocation_queue BEGIN
    UPDATE namespace_usage SET bytes = bytes - octet_length(OLD.payload) WHERE namespace = OLD.namespace;
END;

CREATE TRIGGER usage_dead_letter_insert AFTER INSERT ON dead_letters BEGIN
    INSERT INTO namespace_usage (namespace, bytes)
    VALUES (NEW.namespace, octet_length(NEW.event) + octet_length(NEW.details))
    ON CONFLICT (namespace) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER usage_dead_letter_delete AFTER DELETE ON dead_letters BEGIN
    UPDATE namespace_usage SET bytes = bytes - octet_length(OLD.event) - octet_length(OLD.details)
    WHERE namespace = OLD.namespace;
END;

-- What deleted activation records (retention, or a user's delete) add to usage reports: per
-- namespace, UTC day and function, the figures `usage` sums, so deleting records never changes
-- a report (reports over deleted days are per whole day).
CREATE TABLE usage_rollup (
    namespace   TEXT    NOT NULL,
    day         INTEGER NOT NULL, -- start_ms / 86400000
    path_tail   TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    invocations INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    mb_ms       INTEGER NOT NULL,
    PRIMARY KEY (namespace, day, path_tail)
);
CREATE TRIGGER usage_rollup_on_delete AFTER DELETE ON activations WHEN OLD.kind <> 'trigger' BEGIN
    INSERT INTO usage_rollup (namespace, day, path_tail, kind, invocations, errors, duration_ms, mb_ms)
    VALUES (OLD.namespace, OLD.start_ms / 86400000, OLD.path_tail, OLD.kind, 1, OLD.status_code <> 0,
            OLD.duration_ms,
            CASE WHEN OLD.kind <> 'sequence' THEN OLD.duration_ms * OLD.memory_mb ELSE 0 END)
    ON CONFLICT (namespace, day, path_tail) DO UPDATE SET
        kind = max(kind, excluded.kind),
        invocations = invocations + excluded.invocations,
        errors = errors + excluded.errors,
        duration_ms = duration_ms + excluded.duration_ms,
        mb_ms = mb_ms + excluded.mb_ms;
END;
