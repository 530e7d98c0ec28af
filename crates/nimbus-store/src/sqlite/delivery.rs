//! SQLite implementation of [`DeliveryQueue`] and [`DeadLetterStore`].

use super::{
    Durability, SqliteStore, db_err, decode, encode, exec_cached, now_millis, paging, to_u64,
    upsert_activation,
};
use crate::{
    DeadLetter, DeadLetterStore, DeliveryQueue, QueuedInvocation, Schedule, StoreError, StoreResult,
};
use async_trait::async_trait;
use nimbus_model::{Activation, ActivationId};
use rusqlite::{Connection, OptionalExtension, params};

fn insert_dead_letter(
    conn: &Connection,
    op: &'static str,
    dl: &DeadLetter,
    event: &str,
    details: &str,
) -> StoreResult<()> {
    let n = conn
        .prepare_cached(
            "INSERT INTO dead_letters
                 (namespace, id, source, reason, event, attempts, details, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (namespace, id) DO NOTHING",
        )
        .and_then(|mut st| {
            st.execute(params![
                dl.namespace,
                dl.id,
                dl.source,
                dl.reason,
                event,
                i64::from(dl.attempts),
                details,
                dl.created_at
            ])
        })
        .map_err(db_err(op))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "dead letter {} already exists in {}",
            dl.id, dl.namespace
        )));
    }
    Ok(())
}

type DeadLetterRow = (String, String, String, String, String, i64, String, i64);

fn row_to_dead_letter(row: DeadLetterRow) -> StoreResult<DeadLetter> {
    let (namespace, id, source, reason, event, attempts, details, created_at) = row;
    Ok(DeadLetter {
        event: decode(&format!("dead letter {id} event"), &event)?,
        details: decode(&format!("dead letter {id} details"), &details)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        namespace,
        id,
        source,
        reason,
        created_at,
    })
}

fn read_dead_letter(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetterRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

const DEAD_LETTER_COLUMNS: &str =
    "namespace, id, source, reason, event, attempts, details, created_at";

/// The columns of one pending queue entry, with its payload already encoded (so the writer
/// job owns only strings, not a copy of the payload's JSON tree).
pub(super) struct QueueRow {
    activation_id: String,
    namespace: String,
    payload: String,
    enqueued_at: i64,
    attempts: i64,
    not_before: i64,
    order_key: Option<String>,
}

impl QueueRow {
    pub(super) fn new(
        op: &'static str,
        item: &QueuedInvocation,
        s: &Schedule,
    ) -> StoreResult<Self> {
        Ok(QueueRow {
            activation_id: item.activation_id.as_str().to_string(),
            namespace: item.namespace.clone(),
            payload: encode(op, &item.payload)?,
            enqueued_at: item.enqueued_at,
            attempts: i64::from(item.attempts),
            not_before: s.not_before,
            order_key: s.order_key.clone(),
        })
    }

    /// `QuotaExceeded` if the payload would take its namespace over its quota.
    pub(super) fn check_quota(&self, c: &Connection, shared: &super::Shared) -> StoreResult<()> {
        super::storage::check_quota(c, shared, &self.namespace, self.payload.len() as u64)
    }

    /// Inserts the entry; `Conflict` if its id is queued already.
    pub(super) fn insert(&self, c: &Connection, op: &'static str) -> StoreResult<()> {
        // `seq` only matters among rows of one key; one past the largest is enough since there
        // is a single writer.
        let n = exec_cached(
            c,
            "INSERT INTO invocation_queue
                     (activation_id, namespace, payload, enqueued_at, attempts, state,
                      claimed_at, not_before, order_key, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', NULL, ?6, ?7,
                         (SELECT COALESCE(MAX(seq), 0) + 1 FROM invocation_queue))
                 ON CONFLICT (activation_id) DO NOTHING",
            params![
                self.activation_id,
                self.namespace,
                self.payload,
                self.enqueued_at,
                self.attempts,
                self.not_before,
                self.order_key
            ],
        )
        .map_err(db_err(op))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "activation {} is already queued",
                self.activation_id
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn enqueue_scheduled(&self, item: &QueuedInvocation, s: &Schedule) -> StoreResult<()> {
        let op = "enqueue_scheduled";
        let row = QueueRow::new(op, item, s)?;
        let shared = std::sync::Arc::clone(&self.inner.shared);
        self.write_new(op, Durability::Full, move |c| {
            row.check_quota(c, &shared)?;
            row.insert(c, op)
        })
        .await
    }

    async fn enqueue_fire(
        &self,
        items: &[(QueuedInvocation, Schedule)],
        record: &Activation,
    ) -> StoreResult<()> {
        let op = "enqueue_fire";
        let rows = items
            .iter()
            .map(|(item, s)| QueueRow::new(op, item, s))
            .collect::<StoreResult<Vec<_>>>()?;
        let json = encode(op, record)?;
        let record = record.clone();
        // Only accepted work needs the fsync; a fire that queued nothing is just a record.
        let durability = if rows.is_empty() {
            Durability::Normal
        } else {
            Durability::Full
        };
        let shared = std::sync::Arc::clone(&self.inner.shared);
        self.write_new(op, durability, move |c| {
            // The batch runs this job in a savepoint: an error rolls back all of it.
            let grow: usize = rows.iter().map(|r| r.payload.len()).sum::<usize>() + json.len();
            super::storage::check_quota(c, &shared, &record.namespace, grow as u64)?;
            for row in &rows {
                row.insert(c, op)?;
            }
            upsert_activation(c, op, &record, &json)
        })
        .await
    }

    async fn complete_and_retry(
        &self,
        id: &ActivationId,
        record: &Activation,
        next: &QueuedInvocation,
        not_before: i64,
    ) -> StoreResult<()> {
        let op = "complete_and_retry";
        let json = encode(op, record)?;
        let payload = encode(op, &next.payload)?;
        let (id, record, next) = (id.clone(), record.clone(), next.clone());
        self.write(op, Durability::Full, move |c| {
            let tx = c.savepoint().map_err(db_err(op))?;
            upsert_activation(&tx, op, &record, &json)?;
            let n = tx
                .execute(
                    "UPDATE invocation_queue
                     SET activation_id = ?1, payload = ?2, attempts = ?3, state = 'pending',
                         claimed_at = NULL, not_before = ?4
                     WHERE activation_id = ?5",
                    params![
                        next.activation_id.as_str(),
                        payload,
                        i64::from(next.attempts),
                        not_before,
                        id.as_str()
                    ],
                )
                .map_err(db_err(op))?;
            if n == 0 {
                // The entry is gone (completed elsewhere): queue the retry as a new entry.
                tx.execute(
                    "INSERT INTO invocation_queue
                         (activation_id, namespace, payload, enqueued_at, attempts, state,
                          claimed_at, not_before)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', NULL, ?6)",
                    params![
                        next.activation_id.as_str(),
                        next.namespace,
                        payload,
                        next.enqueued_at,
                        i64::from(next.attempts),
                        not_before
                    ],
                )
                .map_err(db_err(op))?;
            }
            tx.commit().map_err(db_err(op))
        })
        .await
    }

    async fn complete_and_dead_letter(
        &self,
        id: &ActivationId,
        record: &Activation,
        dl: &DeadLetter,
    ) -> StoreResult<()> {
        let op = "complete_and_dead_letter";
        let json = encode(op, record)?;
        let event = encode(op, &dl.event)?;
        let details = encode(op, &dl.details)?;
        let (id, record, dl) = (id.clone(), record.clone(), dl.clone());
        self.write(op, Durability::Full, move |c| {
            let tx = c.savepoint().map_err(db_err(op))?;
            upsert_activation(&tx, op, &record, &json)?;
            exec_cached(
                &tx,
                "DELETE FROM invocation_queue WHERE activation_id = ?1",
                params![id.as_str()],
            )
            .map_err(db_err(op))?;
            insert_dead_letter(&tx, op, &dl, &event, &details)?;
            tx.commit().map_err(db_err(op))
        })
        .await
    }

    async fn next_due(&self) -> StoreResult<Option<i64>> {
        let op = "next_due";
        self.read(op, move |c| {
            c.query_row(
                "SELECT MIN(not_before) FROM invocation_queue
                 WHERE state = 'pending' AND not_before > ?1",
                params![now_millis()],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(db_err(op))
        })
        .await
    }
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn put_dead_letter(&self, dl: &DeadLetter) -> StoreResult<()> {
        let op = "put_dead_letter";
        let event = encode(op, &dl.event)?;
        let details = encode(op, &dl.details)?;
        let dl = dl.clone();
        self.write(op, Durability::Full, move |c| {
            insert_dead_letter(c, op, &dl, &event, &details)
        })
        .await
    }

    async fn get_dead_letter(&self, ns: &str, id: &str) -> StoreResult<Option<DeadLetter>> {
        let op = "get_dead_letter";
        let (ns, id) = (ns.to_string(), id.to_string());
        self.read(op, move |c| {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE namespace = ?1 AND id = ?2"
            );
            c.prepare_cached(&sql)
                .and_then(|mut st| st.query_row(params![ns, id], read_dead_letter).optional())
                .map_err(db_err(op))?
                .map(row_to_dead_letter)
                .transpose()
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        ns: &str,
        skip: u64,
        limit: Option<u64>,
    ) -> StoreResult<Vec<DeadLetter>> {
        let op = "list_dead_letters";
        let ns = ns.to_string();
        let [lim, off] = paging(skip, limit);
        self.read(op, move |c| {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE namespace = ?1
                 ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
            );
            let rows: Vec<DeadLetterRow> = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(params![ns, lim, off], read_dead_letter)?
                        .collect()
                })
                .map_err(db_err(op))?;
            rows.into_iter().map(row_to_dead_letter).collect()
        })
        .await
    }

    async fn count_dead_letters(&self, ns: &str) -> StoreResult<u64> {
        self.count_where(
            "count_dead_letters",
            "dead_letters",
            "namespace = ?".into(),
            vec![rusqlite::types::Value::Text(ns.to_string())],
        )
        .await
    }

    async fn delete_dead_letter(&self, ns: &str, id: &str) -> StoreResult<bool> {
        let op = "delete_dead_letter";
        let (ns, id) = (ns.to_string(), id.to_string());
        self.write(op, Durability::Full, move |c| {
            c.execute(
                "DELETE FROM dead_letters WHERE namespace = ?1 AND id = ?2",
                params![ns, id],
            )
            .map(|n| n > 0)
            .map_err(db_err(op))
        })
        .await
    }

    async fn purge_dead_letters(&self, ns: &str) -> StoreResult<u64> {
        let op = "purge_dead_letters";
        let ns = ns.to_string();
        self.write(op, Durability::Full, move |c| {
            c.execute("DELETE FROM dead_letters WHERE namespace = ?1", params![ns])
                .map(|n| to_u64(i64::try_from(n).unwrap_or(i64::MAX)))
                .map_err(db_err(op))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ActivationStore, InvocationQueue};
    use nimbus_model::{ActivationResponse, KeyValues, Version};
    use serde_json::json;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("nimbus.sqlite")).unwrap()
    }

    fn id(n: u32) -> ActivationId {
        ActivationId::parse(&format!("{n:032x}")).unwrap()
    }

    fn queued(n: u32) -> QueuedInvocation {
        QueuedInvocation {
            activation_id: id(n),
            namespace: "guest".into(),
            payload: json!({ "n": n }),
            enqueued_at: 1000 + i64::from(n),
            attempts: 0,
        }
    }

    fn record(n: u32) -> Activation {
        Activation {
            namespace: "guest".into(),
            name: "a".into(),
            subject: "guest".into(),
            activation_id: id(n),
            version: Version::default(),
            publish: false,
            start: 1,
            end: 2,
            duration: Some(1),
            cause: None,
            logs: vec![],
            annotations: KeyValues::new(),
            response: ActivationResponse::success(json!({})),
        }
    }

    fn dead_letter(ns: &str, n: u32, created_at: i64) -> DeadLetter {
        DeadLetter {
            id: format!("{n:032x}"),
            namespace: ns.into(),
            source: "rule:guest/r".into(),
            reason: "boom".into(),
            event: json!({ "temp": n }),
            attempts: 3,
            created_at,
            details: json!({ "rule": "r" }),
        }
    }

    fn claimed_ids(items: &[QueuedInvocation]) -> Vec<ActivationId> {
        items.iter().map(|i| i.activation_id.clone()).collect()
    }

    #[tokio::test]
    async fn a_fire_queues_its_activations_and_records_the_trigger_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let now = Schedule::default();
        s.enqueue_fire(
            &[(queued(1), now.clone()), (queued(2), now.clone())],
            &record(10),
        )
        .await
        .unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), 2);
        assert!(s.get_activation("guest", &id(10)).await.unwrap().is_some());

        // The second entry conflicts (already queued): nothing of this fire is written.
        let err = s
            .enqueue_fire(&[(queued(3), now.clone()), (queued(2), now)], &record(11))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(s.queue_depth().await.unwrap(), 2, "entry 3 was rolled back");
        assert!(s.get_activation("guest", &id(11)).await.unwrap().is_none());

        // A fire that matched no rule still records the trigger.
        s.enqueue_fire(&[], &record(12)).await.unwrap();
        drop(s);
        let s = open(&dir);
        assert!(s.get_activation("guest", &id(12)).await.unwrap().is_some());
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(1), id(2)]);
    }

    #[tokio::test]
    async fn dead_letters_are_per_namespace_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.put_dead_letter(&dead_letter("a", 1, 10)).await.unwrap();
        s.put_dead_letter(&dead_letter("a", 2, 20)).await.unwrap();
        s.put_dead_letter(&dead_letter("b", 1, 30)).await.unwrap();
        assert!(matches!(
            s.put_dead_letter(&dead_letter("a", 1, 10)).await,
            Err(StoreError::Conflict(_))
        ));
        drop(s);
        let s = open(&dir);
        let a = s.list_dead_letters("a", 0, None).await.unwrap();
        assert_eq!(
            a.iter().map(|d| d.created_at).collect::<Vec<_>>(),
            vec![20, 10]
        );
        assert_eq!(a[1], dead_letter("a", 1, 10));
        assert_eq!(s.count_dead_letters("a").await.unwrap(), 2);
        assert_eq!(s.list_dead_letters("a", 1, Some(5)).await.unwrap().len(), 1);
        let one = format!("{:032x}", 1);
        assert!(s.get_dead_letter("b", &one).await.unwrap().is_some());
        assert!(s.delete_dead_letter("a", &one).await.unwrap());
        assert!(!s.delete_dead_letter("a", &one).await.unwrap());
        assert!(s.get_dead_letter("a", &one).await.unwrap().is_none());
        assert!(s.get_dead_letter("b", &one).await.unwrap().is_some());
        assert_eq!(s.purge_dead_letters("a").await.unwrap(), 1);
        assert_eq!(s.count_dead_letters("a").await.unwrap(), 0);
        assert_eq!(s.count_dead_letters("b").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn scheduled_entries_wait_until_due() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let later = now_millis() + 60_000;
        s.enqueue_scheduled(
            &queued(1),
            &Schedule {
                not_before: later,
                order_key: None,
            },
        )
        .await
        .unwrap();
        s.enqueue(&queued(2)).await.unwrap();
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(2)]);
        assert_eq!(s.next_due().await.unwrap(), Some(later));
        assert!(s.claim(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keyed_entries_run_one_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let key = |k: &str| Schedule {
            not_before: 0,
            order_key: Some(k.into()),
        };
        // Enqueued out of id order: order is by enqueue position, not id.
        s.enqueue_scheduled(&queued(5), &key("d1")).await.unwrap();
        s.enqueue_scheduled(&queued(3), &key("d1")).await.unwrap();
        s.enqueue_scheduled(&queued(4), &key("d2")).await.unwrap();
        s.enqueue_scheduled(&queued(1), &key("d1")).await.unwrap();
        let first = claimed_ids(&s.claim(10).await.unwrap());
        assert_eq!(first.len(), 2);
        assert!(first.contains(&id(5)) && first.contains(&id(4)));
        // Nothing more of d1 while 5 runs.
        assert!(s.claim(10).await.unwrap().is_empty());
        // 5 fails and is retried later: it keeps its place, so 3 still waits.
        let mut next = queued(6);
        next.enqueued_at = 1005;
        s.complete_and_retry(&id(5), &record(5), &next, now_millis() + 60_000)
            .await
            .unwrap();
        assert!(s.claim(10).await.unwrap().is_empty());
        s.complete(&id(4), &record(4)).await.unwrap();
        // The retry gives up: dead-lettered, and d1 moves on to 3, then 1.
        s.with_writer(|c| {
            c.execute("UPDATE invocation_queue SET not_before = 0", [])
                .map_err(db_err("test"))
        })
        .await
        .unwrap();
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(6)]);
        s.complete_and_dead_letter(&id(6), &record(6), &dead_letter("guest", 6, 1))
            .await
            .unwrap();
        assert_eq!(s.count_dead_letters("guest").await.unwrap(), 1);
        assert!(s.get_activation("guest", &id(6)).await.unwrap().is_some());
        assert!(s.get_activation("guest", &id(5)).await.unwrap().is_some());
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(3)]);
        s.complete(&id(3), &record(3)).await.unwrap();
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(1)]);
        s.complete(&id(1), &record(1)).await.unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_scheduled_retry_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.enqueue(&queued(1)).await.unwrap();
        assert_eq!(s.claim(1).await.unwrap().len(), 1);
        s.complete_and_retry(&id(1), &record(1), &queued(2), now_millis() + 200)
            .await
            .unwrap();
        drop(s);
        let s = open(&dir);
        s.recover_claimed().await.unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), 1);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        assert_eq!(claimed_ids(&s.claim(10).await.unwrap()), vec![id(2)]);
    }
}
