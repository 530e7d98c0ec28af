-- Usage metering (issue 7): the figures a usage report sums, as plain columns so the report is one
-- indexed SQL aggregate rather than a scan of JSON records.
--   kind        the `kind` annotation (`nodejs:20`, `sequence`, `trigger`, …)
--   status_code response.statusCode (0 success, 1 application, 2 developer, 3 internal error)
--   duration_ms the record's duration (0 for trigger records)
--   memory_mb   the memory limit the run had (`limits` annotation), 0 when unknown
ALTER TABLE activations ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE activations ADD COLUMN status_code INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activations ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activations ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;

-- Backfill records written before this migration from their JSON (SQLite's JSON functions; a
-- PostgreSQL port does the same with jsonb operators).
UPDATE activations SET
    status_code = COALESCE(json_extract(record, '$.response.statusCode'), 0),
    duration_ms = COALESCE(json_extract(record, '$.duration'), 0),
    kind = COALESCE((SELECT json_extract(a.value, '$.value') FROM json_each(record, '$.annotations') a
                     WHERE json_extract(a.value, '$.key') = 'kind'), ''),
    memory_mb = COALESCE((SELECT json_extract(a.value, '$.value.memory') FROM json_each(record, '$.annotations') a
                          WHERE json_extract(a.value, '$.key') = 'limits'), 0);

CREATE INDEX activations_by_start_fn ON activations (namespace, start_ms, path_tail);
