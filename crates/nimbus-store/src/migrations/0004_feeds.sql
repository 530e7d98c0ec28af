-- Feed registrations of the built-in providers (issue 5): one row per trigger that a built-in
-- feed action (`/whisk.system/...`) was asked to CREATE for. Resumed at start-up.
CREATE TABLE feed_registrations (
    namespace  TEXT    NOT NULL,
    trigger    TEXT    NOT NULL, -- trigger name (triggers live at the namespace's top level)
    provider   TEXT    NOT NULL, -- e.g. `alarms/alarm`, `mqtt/subscribe`
    uuid       TEXT    NOT NULL, -- credential uuid the feed fires with (never the key)
    config     TEXT    NOT NULL, -- JSON: the validated parameters
    status     TEXT    NOT NULL, -- active | paused
    state      TEXT    NOT NULL, -- JSON: provider progress (e.g. the last fired alarm slot)
    created    INTEGER NOT NULL, -- epoch ms
    updated    INTEGER NOT NULL, -- epoch ms
    PRIMARY KEY (namespace, trigger)
);
