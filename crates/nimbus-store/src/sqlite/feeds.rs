//! [`FeedStore`] on SQLite. Every write runs with `synchronous=FULL`: a registration or an alarm's
//! progress must survive power loss like an accepted invocation.

use super::{Durability, SqliteStore, db_err, decode, encode};
use crate::{FeedRegistration, FeedStore, StoreResult};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};
use serde_json::Value;

const COLUMNS: &str = "namespace, trigger, provider, uuid, config, status, state, created, updated";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(FeedRegistration, String, String)> {
    Ok((
        FeedRegistration {
            namespace: r.get(0)?,
            trigger: r.get(1)?,
            provider: r.get(2)?,
            uuid: r.get(3)?,
            config: Value::Null,
            paused: r.get::<_, String>(5)? == "paused",
            state: Value::Null,
            created: r.get(7)?,
            updated: r.get(8)?,
        },
        r.get(4)?,
        r.get(6)?,
    ))
}

fn finish(row: (FeedRegistration, String, String)) -> StoreResult<FeedRegistration> {
    let (mut reg, config, state) = row;
    reg.config = decode("feed config", &config)?;
    reg.state = decode("feed state", &state)?;
    Ok(reg)
}

fn status(paused: bool) -> &'static str {
    if paused { "paused" } else { "active" }
}

#[async_trait]
impl FeedStore for SqliteStore {
    async fn put_feed(&self, reg: &FeedRegistration) -> StoreResult<()> {
        let op = "put feed";
        let config = encode(op, &reg.config)?;
        let state = encode(op, &reg.state)?;
        let reg = reg.clone();
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "INSERT INTO feed_registrations
                     (namespace, trigger, provider, uuid, config, status, state, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (namespace, trigger) DO UPDATE SET
                     provider = excluded.provider, uuid = excluded.uuid, config = excluded.config,
                     status = excluded.status, state = excluded.state, updated = excluded.updated",
                params![
                    reg.namespace,
                    reg.trigger,
                    reg.provider,
                    reg.uuid,
                    config,
                    status(reg.paused),
                    state,
                    reg.created,
                    reg.updated
                ],
            )
            .map_err(db_err(op))?;
            Ok(())
        })
        .await
    }

    async fn get_feed(&self, ns: &str, trigger: &str) -> StoreResult<Option<FeedRegistration>> {
        let op = "get feed";
        let (ns, trigger) = (ns.to_string(), trigger.to_string());
        let row = self
            .read(op, move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM feed_registrations WHERE namespace = ?1 AND trigger = ?2"
                ))
                .and_then(|mut st| st.query_row(params![ns, trigger], from_row).optional())
                .map_err(db_err(op))
            })
            .await?;
        row.map(finish).transpose()
    }

    async fn delete_feed(&self, ns: &str, trigger: &str) -> StoreResult<bool> {
        let op = "delete feed";
        let (ns, trigger) = (ns.to_string(), trigger.to_string());
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "DELETE FROM feed_registrations WHERE namespace = ?1 AND trigger = ?2",
                params![ns, trigger],
            )
            .map(|n| n > 0)
            .map_err(db_err(op))
        })
        .await
    }

    async fn list_feeds(&self) -> StoreResult<Vec<FeedRegistration>> {
        let op = "list feeds";
        let rows = self
            .read(op, move |c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM feed_registrations ORDER BY created, namespace, trigger"
                    ))
                    .map_err(db_err(op))?;
                let rows = st
                    .query_map([], from_row)
                    .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(db_err(op))?;
                Ok(rows)
            })
            .await?;
        rows.into_iter().map(finish).collect()
    }

    async fn set_feed_paused(&self, ns: &str, trigger: &str, paused: bool) -> StoreResult<bool> {
        let op = "pause feed";
        let (ns, trigger) = (ns.to_string(), trigger.to_string());
        let now = super::now_millis();
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "UPDATE feed_registrations SET status = ?3, updated = ?4
                 WHERE namespace = ?1 AND trigger = ?2",
                params![ns, trigger, status(paused), now],
            )
            .map(|n| n > 0)
            .map_err(db_err(op))
        })
        .await
    }

    async fn set_feed_state(&self, ns: &str, trigger: &str, state: &Value) -> StoreResult<bool> {
        let op = "feed state";
        let state = encode(op, state)?;
        let (ns, trigger) = (ns.to_string(), trigger.to_string());
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "UPDATE feed_registrations SET state = ?3 WHERE namespace = ?1 AND trigger = ?2",
                params![ns, trigger, state],
            )
            .map(|n| n > 0)
            .map_err(db_err(op))
        })
        .await
    }
}
