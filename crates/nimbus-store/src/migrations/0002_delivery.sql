-- Delivery (issue 5): delayed retries, per-key ordering and dead letters.
--
-- `invocation_queue` rows gain:
-- * `not_before`: epoch ms before which a pending row is not claimed (a scheduled retry);
--   0 for ordinary rows, so existing rows and plain `enqueue` behave as before.
-- * `order_key`: rows sharing a key run one at a time, in `seq` order; NULL = unordered.
-- * `seq`: position of a keyed row within its key (a retry keeps the position of the attempt
--   it replaces, so later events of the same key wait for it).
ALTER TABLE invocation_queue ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
ALTER TABLE invocation_queue ADD COLUMN order_key TEXT;
ALTER TABLE invocation_queue ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX invocation_queue_by_key ON invocation_queue (order_key, seq);

-- Events that could not be delivered (retries exhausted, or malformed feed messages).
CREATE TABLE dead_letters (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL, -- 32 hex characters
    source     TEXT    NOT NULL, -- e.g. `rule:guest/r1`, `feed:mqtt:guest/t1`
    reason     TEXT    NOT NULL,
    event      TEXT    NOT NULL, -- JSON: the original event
    attempts   INTEGER NOT NULL DEFAULT 0,
    details    TEXT    NOT NULL, -- JSON, opaque to the store (what a redrive needs)
    created_at INTEGER NOT NULL, -- epoch ms
    PRIMARY KEY (namespace, id)
);
CREATE INDEX dead_letters_by_time ON dead_letters (namespace, created_at DESC, id);
