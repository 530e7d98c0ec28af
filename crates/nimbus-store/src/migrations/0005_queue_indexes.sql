-- Indexes for the hot paths of a busy queue (measured with the MQTT benchmark: without them
-- the writer spent most of its time scanning the queue).
-- * `enqueue_scheduled` numbers a keyed row with MAX(seq) + 1: without an index on `seq` that
--   scanned every queued row on every enqueue.
CREATE INDEX invocation_queue_by_seq ON invocation_queue (seq);
-- (No index on (state, not_before) for `next_due`: without statistics SQLite then chose it for
-- `claim` too, and sorted the whole backlog on every claim.)
-- * Activation lists and counts by name (`activations?name=`, the console, the CLI).
CREATE INDEX activations_by_name ON activations (namespace, name, start_ms DESC);
