-- Tables of the IoT example, in the schema given as psql variable `schema` (so several runs
-- can share one database): psql -v schema=iot -f schema.sql
CREATE SCHEMA IF NOT EXISTS :"schema";
SET search_path TO :"schema";
CREATE TABLE IF NOT EXISTS readings (
    id          BIGSERIAL PRIMARY KEY,
    device      TEXT NOT NULL,
    temp_c      DOUBLE PRECISION NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    UNIQUE (device, received_at, temp_c) -- a redelivered reading is stored once
);
CREATE TABLE IF NOT EXISTS stats (
    device   TEXT PRIMARY KEY,
    readings BIGINT NOT NULL,
    avg_c    DOUBLE PRECISION NOT NULL,
    max_c    DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    reading_id BIGINT PRIMARY KEY,
    device     TEXT NOT NULL,
    temp_c     DOUBLE PRECISION NOT NULL,
    raised_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
