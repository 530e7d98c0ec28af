//! Quotas, retention, full disks and integrity of the embedded store.

use super::*;
use crate::{DeadLetterStore, NamespaceLimits, StorageAccounting};
use nimbus_model::{ActivationResponse, KeyValues, Version};
use serde_json::json;

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nimbus.db")
}

fn open_opts(dir: &tempfile::TempDir, opts: OpenOptions) -> StoreResult<SqliteStore> {
    SqliteStore::open_with(&db(dir), &opts)
}

fn id(n: u32) -> ActivationId {
    ActivationId::parse(&format!("{n:032x}")).unwrap()
}

fn record(ns: &str, n: u32, start: i64, logs: usize) -> Activation {
    Activation {
        namespace: ns.into(),
        name: "a".into(),
        subject: ns.into(),
        activation_id: id(n),
        version: Version::default(),
        publish: false,
        start,
        end: start + 1,
        duration: Some(1),
        cause: None,
        logs: vec!["x".repeat(logs)],
        annotations: KeyValues::new(),
        response: ActivationResponse::success(json!({ "n": n })),
    }
}

fn queued(ns: &str, n: u32, payload: Value) -> QueuedInvocation {
    QueuedInvocation {
        activation_id: id(n),
        namespace: ns.into(),
        payload,
        enqueued_at: 1,
        attempts: 0,
    }
}

/// The counter row, and what a full recount gives.
async fn usage(s: &SqliteStore, ns: &str) -> (u64, u64) {
    let stored = s.namespace_storage(ns).await.unwrap().bytes;
    let ns = ns.to_string();
    let recount = s
        .with_writer(move |c| {
            c.query_row(
                "SELECT COALESCE((SELECT SUM(octet_length(record)) FROM activations WHERE namespace = ?1), 0)
                      + COALESCE((SELECT SUM(octet_length(doc)) FROM entities WHERE namespace = ?1), 0)
                      + COALESCE((SELECT SUM(octet_length(payload)) FROM invocation_queue WHERE namespace = ?1), 0)
                      + COALESCE((SELECT SUM(octet_length(event) + octet_length(details)) FROM dead_letters WHERE namespace = ?1), 0)",
                params![ns],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err("recount"))
        })
        .await
        .unwrap();
    (stored, to_u64(recount))
}

#[tokio::test]
async fn usage_counters_follow_every_kind_of_write_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    assert_eq!(usage(&s, "a").await, (0, 0));
    s.put_entity(
        "a",
        EntityKind::Action,
        "f",
        &json!({"code": "x".repeat(5000)}),
        1,
        None,
    )
    .await
    .unwrap();
    s.put_entity(
        "a",
        EntityKind::Action,
        "f",
        &json!({"code": "y"}),
        2,
        Some(1),
    )
    .await
    .unwrap();
    s.put_activation(&record("a", 1, 10, 3000)).await.unwrap();
    s.put_activation(&record("a", 1, 10, 10)).await.unwrap(); // replaced
    s.put_activation(&record("b", 2, 10, 999)).await.unwrap();
    s.enqueue(&queued("a", 3, json!({"p": "z".repeat(700)})))
        .await
        .unwrap();
    assert_eq!(s.claim(10).await.unwrap().len(), 1); // a claim is not charged
    s.complete(&id(3), &record("a", 3, 20, 50)).await.unwrap();
    s.put_dead_letter(&crate::DeadLetter {
        id: "d1".into(),
        namespace: "a".into(),
        source: "rule:a/r".into(),
        reason: "boom".into(),
        event: json!({"e": 1}),
        attempts: 1,
        created_at: 1,
        details: json!({}),
    })
    .await
    .unwrap();
    let (stored, recount) = usage(&s, "a").await;
    assert_eq!(stored, recount);
    assert!(stored > 0);
    let st = s.namespace_storage("a").await.unwrap();
    assert_eq!(st.activations, 2);
    assert_eq!(usage(&s, "b").await.0, usage(&s, "b").await.1);

    s.delete_entity("a", EntityKind::Action, "f", None)
        .await
        .unwrap();
    s.purge_dead_letters("a").await.unwrap();
    assert!(s.delete_activation("a", &id(1)).await.unwrap());
    assert!(s.delete_activation("a", &id(3)).await.unwrap());
    assert_eq!(usage(&s, "a").await, (0, 0));
    assert_eq!(s.namespace_storage("a").await.unwrap().activations, 0);
}

#[tokio::test]
async fn migration_counts_what_was_stored_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    s.put_activation(&record("a", 1, 10, 4000)).await.unwrap();
    s.put_entity("a", EntityKind::Action, "f", &json!({"code": "c"}), 1, None)
        .await
        .unwrap();
    let expected = usage(&s, "a").await.1;
    // Back to the schema before 0007, with the counters gone, then reopened: rebuilt.
    let before = MIGRATIONS.len() as i64 - 1;
    s.with_writer(move |c| {
        c.execute_batch(
            "DROP TABLE meta; DROP TABLE namespace_usage; DROP TABLE namespace_limits;
             DROP TRIGGER usage_activation_insert; DROP TRIGGER usage_activation_update;
             DROP TRIGGER usage_activation_delete; DROP TRIGGER usage_entity_insert;
             DROP TRIGGER usage_entity_update; DROP TRIGGER usage_entity_delete;
             DROP TRIGGER usage_queue_insert; DROP TRIGGER usage_queue_update;
             DROP TRIGGER usage_queue_delete; DROP TRIGGER usage_dead_letter_insert;
             DROP TRIGGER usage_dead_letter_delete; DROP TRIGGER usage_rollup_on_delete;
             DROP TABLE usage_rollup;",
        )
        .unwrap();
        c.pragma_update(None, "user_version", before).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    drop(s);
    std::fs::remove_file(dir.path().join("nimbus.db.seal")).unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    assert_eq!(usage(&s, "a").await, (expected, expected));
    assert_eq!(s.namespace_storage("a").await.unwrap().activations, 1);
}

#[tokio::test]
async fn a_namespace_at_its_quota_is_refused_new_writes_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(
        &dir,
        OpenOptions {
            limits: StorageLimits {
                quota_bytes: 20_000,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    s.put_activation(&record("a", 1, 10, 19_000)).await.unwrap();
    let big = json!({"code": "x".repeat(5000)});
    let err = s
        .put_entity("a", EntityKind::Action, "f", &big, 1, None)
        .await
        .unwrap_err();
    match &err {
        StoreError::QuotaExceeded {
            namespace, quota, ..
        } => {
            assert_eq!(namespace, "a");
            assert_eq!(*quota, 20_000);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("namespace a has used") && msg.contains("of its 19.5 KiB storage quota"),
        "{msg}"
    );
    let err = s
        .enqueue(&queued("a", 2, json!({"p": "y".repeat(2000)})))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { .. }), "{err:?}");
    // Small writes still fit; another namespace is untouched.
    s.put_entity("a", EntityKind::Action, "g", &json!({}), 1, None)
        .await
        .unwrap();
    s.put_entity("b", EntityKind::Action, "f", &big, 1, None)
        .await
        .unwrap();
    // The in-memory admission catches up within the refresh interval.
    s.put_activation(&record("a", 3, 11, 2000)).await.unwrap();
    tokio::time::sleep(USAGE_REFRESH * 3).await;
    assert!(matches!(
        s.admit("a"),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert!(s.admit("b").is_ok());
    // Completing accepted work is never refused by the quota.
    s.complete(&id(9), &record("a", 9, 12, 5000)).await.unwrap();
    // A per-namespace override raises it at once.
    s.set_namespace_limits(
        "a",
        &NamespaceLimits {
            quota_bytes: Some(1 << 20),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.put_entity("a", EntityKind::Action, "f", &big, 1, None)
        .await
        .unwrap();
    assert!(s.admit("a").is_ok());
    assert_eq!(
        s.namespace_limits("a").await.unwrap().quota_bytes,
        Some(1 << 20)
    );
}

#[tokio::test]
async fn retention_deletes_by_age_and_count_oldest_first_keeping_referenced_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(
        &dir,
        OpenOptions {
            limits: StorageLimits {
                max_count: 5,
                max_age: Duration::from_secs(3600),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let now = now_millis();
    // a: 8 recent records (3 over the count); b: 2 old ones and 1 recent.
    for n in 0..8 {
        s.put_activation(&record("a", n, now - 1000 + i64::from(n), 10))
            .await
            .unwrap();
    }
    s.put_activation(&record("b", 100, now - 7_200_000, 10))
        .await
        .unwrap();
    s.put_activation(&record("b", 101, now - 7_100_000, 10))
        .await
        .unwrap();
    s.put_activation(&record("b", 102, now, 10)).await.unwrap();
    // a's oldest record is the cause of a queued rule activation: kept.
    s.enqueue(&queued("a", 200, json!({"cause": id(0).as_str()})))
        .await
        .unwrap();
    let deleted = s.housekeeping_pass().await.unwrap();
    assert_eq!(deleted, 3 + 2);
    let left = |ns: &'static str| {
        let s = s.clone();
        async move {
            let mut v: Vec<u32> = s
                .list_activations(ns, &ActivationQuery::default())
                .await
                .unwrap()
                .iter()
                .map(|a| u32::from_str_radix(a.activation_id.as_str(), 16).unwrap())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(left("a").await, vec![0, 4, 5, 6, 7]);
    assert_eq!(left("b").await, vec![102]);
    // A per-namespace override; the queue entry done, its cause goes too.
    s.set_namespace_limits(
        "a",
        &NamespaceLimits {
            max_count: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.complete(&id(200), &record("a", 200, now + 10, 10))
        .await
        .unwrap();
    assert_eq!(s.housekeeping_pass().await.unwrap(), 4);
    assert_eq!(left("a").await, vec![7, 200]);
    assert_eq!(usage(&s, "a").await.0, usage(&s, "a").await.1);
}

#[tokio::test]
async fn retention_works_in_small_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(
        &dir,
        OpenOptions {
            limits: StorageLimits {
                max_count: 10,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let now = now_millis();
    for n in 0..(storage_prune_rows() as u32 * 2 + 30) {
        s.put_activation_deferred(&record("a", n, now + i64::from(n), 10));
    }
    let (n, more) = s
        .prune_step(std::sync::Arc::new(Default::default()))
        .await
        .unwrap();
    assert_eq!(n as usize, storage_prune_rows());
    assert!(more);
    s.housekeeping_pass().await.unwrap();
    assert_eq!(s.namespace_storage("a").await.unwrap().activations, 10);
}

fn storage_prune_rows() -> usize {
    200
}

#[tokio::test]
async fn a_full_disk_is_typed_and_blocking_records_stop_being_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    assert!(s.inner.shared.roomy());
    s.with_writer(|c| {
        let pages: i64 = c
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        c.pragma_update(None, "max_page_count", pages).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    let err = s
        .put_activation(&record("a", 1, 1, 300_000))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(
        err.to_string().contains("disk holding the store is full"),
        "{err}"
    );
    assert!(!s.inner.shared.roomy(), "a full disk turns deferring off");
    assert!(!s.put_activation_deferred(&record("a", 2, 1, 10)));
    s.with_writer(|c| {
        c.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    s.put_activation(&record("a", 1, 1, 300_000)).await.unwrap();
    assert!(s.inner.shared.roomy(), "the next commit turns it back on");
}

#[tokio::test]
async fn below_the_reserve_new_work_is_refused_and_accepted_work_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(
        &dir,
        OpenOptions {
            reserve_bytes: u64::MAX,
            ..Default::default()
        },
    )
    .unwrap();
    let err = s
        .put_entity("a", EntityKind::Action, "f", &json!({}), 1, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Full(m) if m.contains("keeps for work it already accepted")),
        "{err:?}"
    );
    assert!(matches!(
        s.enqueue(&queued("a", 1, json!({}))).await,
        Err(StoreError::Full(_))
    ));
    assert!(matches!(s.admit("a"), Err(StoreError::Full(_))));
    // Completions, releases and records still go through.
    s.complete(&id(2), &record("a", 2, 1, 10)).await.unwrap();
    s.put_activation(&record("a", 3, 1, 10)).await.unwrap();
}

// ----- integrity -----

fn integrity_message(r: StoreResult<SqliteStore>) -> String {
    match r {
        Err(StoreError::Integrity(m)) => m,
        Err(other) => panic!("expected an integrity error, got {other:?}"),
        Ok(_) => panic!("expected an integrity error, the store opened"),
    }
}

fn existing() -> OpenOptions {
    OpenOptions {
        expect: Expect::Existing("the data directory holds key files".into()),
        quick_check: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_new_store_records_its_installation_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    let first = s.installation().clone();
    assert!(first.fresh);
    assert_eq!(first.id.len(), 32);
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = open_opts(&dir, existing()).unwrap();
    assert_eq!(s.installation().id, first.id);
    assert!(!s.installation().fresh);
}

#[tokio::test]
async fn a_missing_or_empty_database_of_an_installation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = integrity_message(open_opts(&dir, existing()));
    assert!(m.contains("holds key files, but its database"), "{m}");
    assert!(m.contains("is missing"), "{m}");
    assert!(m.contains("nimbus admin restore"), "{m}");
    assert!(!db(&dir).exists(), "nothing was created");

    std::fs::write(db(&dir), b"").unwrap();
    let m = integrity_message(open_opts(&dir, existing()));
    assert!(m.contains("is empty"), "{m}");

    // Without signs of an installation, an empty file is a new one.
    open_opts(&dir, OpenOptions::default()).unwrap();
}

#[tokio::test]
async fn a_wal_or_seal_without_its_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    s.put_entity("a", EntityKind::Action, "f", &json!({}), 1, None)
        .await
        .unwrap();
    let wal = dir.path().join("nimbus.db-wal");
    assert!(wal.exists());
    // While open, so the WAL stays: the database file goes.
    std::fs::remove_file(db(&dir)).unwrap();
    let m = integrity_message(open_opts(&dir, OpenOptions::default()));
    assert!(m.contains("write-ahead log"), "{m}");
    std::fs::remove_file(&wal).unwrap();
    let _ = std::fs::remove_file(dir.path().join("nimbus.db-shm"));
    let m = integrity_message(open_opts(&dir, OpenOptions::default()));
    assert!(m.contains("seal file"), "{m}");
    drop(s);
}

/// What a crash leaves after a write: a copy of the files, taken while the store is open.
fn crash_copy(dir: &tempfile::TempDir, with_wal: bool) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let mut files = vec!["nimbus.db", "nimbus.db.seal"];
    if with_wal {
        // Not the -shm: SQLite rebuilds the WAL index from the log, as after a reboot.
        files.push("nimbus.db-wal");
    }
    for f in files {
        std::fs::copy(dir.path().join(f), to.path().join(f)).unwrap();
    }
    to
}

#[tokio::test]
async fn lost_commits_are_detected_by_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(
        &dir,
        OpenOptions {
            seal_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    s.put_entity("a", EntityKind::Action, "f", &json!({}), 1, None)
        .await
        .unwrap();
    // Everything so far in the database file; then more commits, in the WAL only.
    s.with_writer(|c| {
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    for n in 0..3 {
        s.put_entity(
            "a",
            EntityKind::Action,
            &format!("g{n}"),
            &json!({}),
            1,
            None,
        )
        .await
        .unwrap();
    }
    // The writer seals after each batch, before it takes the next one: the seals of the
    // first two writes are in the WAL and the seal file by now.
    // A crash with its WAL: recovered, nothing lost.
    let intact = crash_copy(&dir, true);
    let r = open_opts(&intact, existing()).unwrap();
    assert!(
        r.get_entity("a", EntityKind::Action, "g2")
            .await
            .unwrap()
            .is_some()
    );
    // The same crash with the WAL deleted: refused.
    let lost = crash_copy(&dir, false);
    let m = integrity_message(open_opts(&lost, existing()));
    assert!(m.contains("lost commits"), "{m}");
    assert!(m.contains("delete the seal file"), "{m}");
    // `check` reports it too.
    let report = check(&lost.path().join("nimbus.db"));
    assert!(
        report.problems.iter().any(|p| p.contains("lost commits")),
        "{report:?}"
    );
    // A WAL truncated in the middle: SQLite keeps the frames before the cut without a word;
    // the last seal was after it.
    let truncated = crash_copy(&dir, true);
    let wal = truncated.path().join("nimbus.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let m = integrity_message(open_opts(&truncated, existing()));
    assert!(m.contains("lost commits"), "{m}");
    drop(s);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    s.with_writer(|c| {
        c.pragma_update(None, "user_version", 999).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    drop(s);
    let m = integrity_message(open_opts(&dir, OpenOptions::default()));
    assert!(
        m.contains("schema version 999, newer than this build"),
        "{m}"
    );
}

/// Overwrites pages in the middle of the file (a torn or bad disk).
fn corrupt(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut at = 4096 * 2;
    while at + 4096 < len {
        f.seek(SeekFrom::Start(at + 100)).unwrap();
        f.write_all(&[0xA5; 1500]).unwrap();
        at += 4096 * 3;
    }
    f.sync_all().unwrap();
}

async fn filled_store(dir: &tempfile::TempDir) {
    let s = open_opts(dir, OpenOptions::default()).unwrap();
    for n in 0..300 {
        s.put_activation(&record("a", n, i64::from(n), 500))
            .await
            .unwrap();
        s.put_entity(
            "a",
            EntityKind::Action,
            &format!("f{n}"),
            &json!({"code": "c".repeat(300)}),
            1,
            None,
        )
        .await
        .unwrap();
    }
    drop(s);
    // The writer thread closes its connection when the last handle is gone: wait for it to
    // checkpoint and remove the WAL.
    for _ in 0..100 {
        if !dir.path().join("nimbus.db-wal").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn check_reports_a_corrupted_file_and_open_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(&dir).await;
    let report = check(&db(&dir));
    assert!(report.ok(), "{report:?}");
    assert!(report.notes.iter().any(|n| n == "integrity_check: ok"));
    corrupt(&db(&dir));
    let report = check(&db(&dir));
    assert!(!report.ok(), "{report:?}");
    let m = integrity_message(open_opts(&dir, existing()));
    assert!(m.contains("damaged") || m.contains("cannot be read"), "{m}");
}

#[tokio::test]
async fn backup_while_writing_then_restore() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    for n in 0..50 {
        s.put_entity(
            "a",
            EntityKind::Action,
            &format!("f{n}"),
            &json!({"n": n}),
            1,
            None,
        )
        .await
        .unwrap();
    }
    // Writers keep going while the backup runs.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for n in 0..400u32 {
                s.put_activation(&record("a", n, i64::from(n), 2000))
                    .await
                    .unwrap();
            }
        })
    };
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.db");
    let (d, f) = (db(&dir), file.clone());
    let copied = tokio::task::spawn_blocking(move || backup(&d, &f))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(copied.installation, s.installation().id);
    assert!(
        !out.path().join("backup.db-wal").exists(),
        "one self-contained file"
    );
    assert!(matches!(
        backup(&db(&dir), &file),
        Err(StoreError::Conflict(_))
    ));

    // Into a fresh directory.
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("data").join("nimbus.db");
    restore(&file, &target).unwrap();
    let r = SqliteStore::open_with(
        &target,
        &OpenOptions {
            expect: Expect::Existing("restored".into()),
            quick_check: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.installation().id, s.installation().id);
    for n in 0..50 {
        assert!(
            r.get_entity("a", EntityKind::Action, &format!("f{n}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    // A consistent moment: the counters match what the copy holds.
    assert_eq!(usage(&r, "a").await.0, usage(&r, "a").await.1);
    drop(r);

    // Over an existing database: the old one is kept aside.
    restore(&file, &target).unwrap();
    let aside = std::fs::read_dir(fresh.path().join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("nimbus.db.before-restore-")
        })
        .count();
    assert_eq!(aside, 1);

    // A damaged backup is refused before anything is touched.
    corrupt(&file);
    let err = restore(&file, &target).unwrap_err();
    assert!(matches!(err, StoreError::Integrity(_)), "{err:?}");
    drop(s);
}

#[tokio::test]
async fn usage_reports_do_not_change_when_records_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    let day = 86_400_000;
    let now = now_millis();
    for (n, (name, kind, ms, status)) in [
        ("hello", "nodejs:20", 100, 0),
        ("hello", "nodejs:20", 7, 1),
        ("big", "python:3", 1500, 2),
        ("seq", "sequence", 1600, 0),
        ("t", "trigger", 0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = record("a", n as u32, now - (n as i64) * day / 2, 10);
        a.name = name.into();
        a.duration = Some(ms);
        a.annotations.set("kind", json!(kind));
        a.annotations.set("limits", json!({"memory": 256}));
        if status != 0 {
            a.response =
                ActivationResponse::error(nimbus_model::ResponseStatus::ApplicationError, "boom");
        }
        s.put_activation(&a).await.unwrap();
    }
    let before = s.usage("a", None, None).await.unwrap();
    assert_eq!(before.functions.len(), 3);
    s.set_namespace_limits(
        "a",
        &NamespaceLimits {
            max_count: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.housekeeping_pass().await.unwrap(), 5);
    assert_eq!(s.namespace_storage("a").await.unwrap().activations, 0);
    assert_eq!(s.usage("a", None, None).await.unwrap(), before);
    // Whole days of a range still count what was deleted.
    let today = s.usage("a", Some(now), None).await.unwrap();
    assert_eq!(today.days.len(), 1, "{today:?}");
}

/// The cost of the usage triggers on the hottest write (`cargo test -p nimbus-store --
/// --ignored --nocapture trigger_cost`): deferred records, with and without the triggers.
#[tokio::test]
#[ignore]
async fn trigger_cost() {
    async fn run(s: &SqliteStore, base: u32) -> Duration {
        let now = now_millis();
        let t = Instant::now();
        for n in 0..20_000 {
            s.put_activation_deferred(&record("a", base + n, now, 200));
        }
        s.flush_deferred().await.unwrap();
        t.elapsed()
    }
    let dir = tempfile::tempdir().unwrap();
    let s = open_opts(&dir, OpenOptions::default()).unwrap();
    run(&s, 1_000_000).await; // warm-up
    let with = run(&s, 0).await;
    s.with_writer(|c| {
        c.execute_batch(
            "DROP TRIGGER usage_activation_insert; DROP TRIGGER usage_activation_update;",
        )
        .unwrap();
        Ok(())
    })
    .await
    .unwrap();
    let without = run(&s, 100_000).await;
    println!("20000 records: with triggers {with:?}, without {without:?}");
}
