use super::*;
use nimbus_model::{ActivationResponse, KeyValues, Version};
use serde_json::json;
use std::collections::HashSet;

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("db").join("nimbus.sqlite")).unwrap()
}

fn id(n: u32) -> ActivationId {
    ActivationId::parse(&format!("{n:032x}")).unwrap()
}

fn activation(ns: &str, n: u32, name: &str, path: Option<&str>, start: i64) -> Activation {
    let mut annotations = KeyValues::new();
    if let Some(p) = path {
        annotations.set("path", json!(p));
    }
    Activation {
        namespace: ns.into(),
        name: name.into(),
        subject: ns.into(),
        activation_id: id(n),
        version: Version::default(),
        publish: false,
        start,
        end: start + 5,
        duration: Some(5),
        cause: None,
        logs: vec![format!("log {n}")],
        annotations,
        response: ActivationResponse::success(json!({ "n": n })),
    }
}

fn queued(n: u32, enqueued_at: i64) -> QueuedInvocation {
    QueuedInvocation {
        activation_id: id(n),
        namespace: "guest".into(),
        payload: json!({ "action": "hello", "n": n }),
        enqueued_at,
        attempts: 0,
    }
}

fn ids(acts: &[Activation]) -> Vec<ActivationId> {
    acts.iter().map(|a| a.activation_id.clone()).collect()
}

fn keys(docs: &[StoredDoc]) -> Vec<&str> {
    docs.iter().map(|d| d.key.as_str()).collect()
}

#[tokio::test]
async fn open_creates_dirs_enables_wal_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert!(s.path().exists());
    let (mode, version, sync) = s
        .with_writer(|c| {
            let mode: String = c
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            let version: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            let sync: i64 = c
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            Ok((mode, version, sync))
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert_eq!(sync, 2, "writes default to synchronous=FULL");
}

/// `synchronous` left on the writer by the last write: 1 = NORMAL, 2 = FULL.
async fn sync_level(s: &SqliteStore) -> i64 {
    s.with_writer(|c| {
        Ok(
            c.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))
                .unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn only_put_activation_runs_at_synchronous_normal() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.put_activation(&activation("guest", 1, "a", None, 1))
        .await
        .unwrap();
    assert_eq!(sync_level(&s).await, 1);
    s.put_entity("guest", EntityKind::Action, "a", &json!({}), 1, None)
        .await
        .unwrap();
    assert_eq!(sync_level(&s).await, 2);

    s.put_activation(&activation("guest", 2, "a", None, 2))
        .await
        .unwrap();
    s.enqueue(&queued(3, 3)).await.unwrap();
    assert_eq!(sync_level(&s).await, 2);

    s.put_activation(&activation("guest", 4, "a", None, 4))
        .await
        .unwrap();
    s.complete(&id(3), &activation("guest", 3, "a", None, 3))
        .await
        .unwrap();
    assert_eq!(sync_level(&s).await, 2);

    s.put_activation(&activation("guest", 5, "a", None, 5))
        .await
        .unwrap();
    s.add_credential(&Credential::new("g", "u", "k", 1))
        .await
        .unwrap();
    assert_eq!(sync_level(&s).await, 2);

    s.put_activation(&activation("guest", 6, "a", None, 6))
        .await
        .unwrap();
    s.delete_entity("guest", EntityKind::Action, "a", None)
        .await
        .unwrap();
    assert_eq!(sync_level(&s).await, 2);
}

#[tokio::test]
async fn deferred_records_are_seen_by_every_later_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for n in 1..=50 {
        assert!(s.put_activation_deferred(&activation("guest", n, "a", None, i64::from(n))));
    }
    // Each read below was issued after the records were queued, none waited for them.
    assert!(s.get_activation("guest", &id(50)).await.unwrap().is_some());
    assert!(s.put_activation_deferred(&activation("guest", 51, "a", None, 51)));
    let q = ActivationQuery::default();
    assert_eq!(s.count_activations("guest", &q).await.unwrap(), 51);
    assert!(s.put_activation_deferred(&activation("guest", 52, "b", None, 52)));
    assert_eq!(
        ids(&s.list_activations("guest", &q).await.unwrap())[0],
        id(52)
    );
    assert!(s.put_activation_deferred(&activation("guest", 53, "b", None, 53)));
    assert_eq!(
        s.usage("guest", None, None).await.unwrap().functions.len(),
        2
    );
    assert!(s.put_activation_deferred(&activation("guest", 54, "b", None, 54)));
    // A flush (the server's shutdown does one) commits what was queued.
    s.flush_deferred().await.unwrap();
    drop(s);
    let s = open(&dir);
    assert!(s.get_activation("guest", &id(54)).await.unwrap().is_some());
}

#[tokio::test]
async fn entity_revisions_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let k = EntityKind::Action;
    assert_eq!(
        s.put_entity("guest", k, "a", &json!({"v": 1}), 10, None)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        s.put_entity("guest", k, "a", &json!({"v": 9}), 11, None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.put_entity("guest", k, "a", &json!({"v": 2}), 12, Some(1))
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        s.put_entity("guest", k, "a", &json!({"v": 3}), 13, Some(1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.entity_rev("guest", k, "a").await.unwrap(), Some(2));
    assert_eq!(s.entity_rev("guest", k, "missing").await.unwrap(), None);
    assert_eq!(s.entity_rev("other", k, "a").await.unwrap(), None);
    let got = s.get_entity("guest", k, "a").await.unwrap().unwrap();
    assert_eq!(
        got,
        StoredDoc {
            namespace: "guest".into(),
            kind: k,
            key: "a".into(),
            doc: json!({"v": 2}),
            updated: 12,
            rev: 2
        }
    );
    // Same key in another kind or namespace is a different entity.
    assert_eq!(
        s.put_entity("guest", EntityKind::Package, "a", &json!({}), 1, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.put_entity("other", k, "a", &json!({}), 1, None)
            .await
            .unwrap(),
        1
    );
    assert!(s.get_entity("nobody", k, "a").await.unwrap().is_none());

    assert!(matches!(
        s.delete_entity("guest", k, "a", Some(1)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.delete_entity("guest", k, "a", Some(2)).await.unwrap());
    assert!(s.get_entity("guest", k, "a").await.unwrap().is_none());
    // The row vanished: conditional writes conflict, unconditional delete reports absence.
    assert!(matches!(
        s.put_entity("guest", k, "a", &json!({}), 14, Some(2)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_entity("guest", k, "a", Some(2)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!s.delete_entity("guest", k, "a", None).await.unwrap());
    assert!(
        s.delete_entity("guest", EntityKind::Package, "a", None)
            .await
            .unwrap()
    );
    // Re-creating starts over at revision 1.
    assert_eq!(
        s.put_entity("guest", k, "a", &json!({}), 15, None)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn entity_lists_sort_page_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let k = EntityKind::Action;
    for (key, updated) in [
        ("b", 30),
        ("a", 30),
        ("c", 10),
        ("p/x", 50),
        ("p/y", 20),
        ("p_/z", 40),
        ("pq/w", 60),
    ] {
        s.put_entity("guest", k, key, &json!({ "key": key }), updated, None)
            .await
            .unwrap();
    }
    s.put_entity("guest", EntityKind::Trigger, "t", &json!({}), 99, None)
        .await
        .unwrap();
    s.put_entity("other", k, "zz", &json!({}), 99, None)
        .await
        .unwrap();

    let all = s
        .list_entities("guest", k, &EntityQuery::default())
        .await
        .unwrap();
    assert_eq!(keys(&all), ["pq/w", "p/x", "p_/z", "a", "b", "p/y", "c"]);
    assert_eq!(all[0].doc, json!({"key": "pq/w"}));
    assert_eq!(
        s.count_entities("guest", k, &EntityQuery::default())
            .await
            .unwrap(),
        7
    );

    let page = EntityQuery {
        skip: 2,
        limit: Some(3),
        ..Default::default()
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &page).await.unwrap()),
        ["p_/z", "a", "b"]
    );
    assert_eq!(
        s.count_entities("guest", k, &page).await.unwrap(),
        7,
        "count ignores paging"
    );
    let past_end = EntityQuery {
        skip: 7,
        ..Default::default()
    };
    assert!(
        s.list_entities("guest", k, &past_end)
            .await
            .unwrap()
            .is_empty()
    );

    let pkg = EntityQuery {
        package: Some("p".into()),
        ..Default::default()
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &pkg).await.unwrap()),
        ["p/x", "p/y"]
    );
    assert_eq!(s.count_entities("guest", k, &pkg).await.unwrap(), 2);
    let pkg_page = EntityQuery {
        package: Some("p".into()),
        skip: 1,
        limit: Some(5),
        top_level_only: false,
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &pkg_page).await.unwrap()),
        ["p/y"]
    );
    // `_` is not a wildcard.
    let underscore = EntityQuery {
        package: Some("p_".into()),
        ..Default::default()
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &underscore).await.unwrap()),
        ["p_/z"]
    );

    let top = EntityQuery {
        top_level_only: true,
        ..Default::default()
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &top).await.unwrap()),
        ["a", "b", "c"]
    );
    assert_eq!(s.count_entities("guest", k, &top).await.unwrap(), 3);
    let top_page = EntityQuery {
        top_level_only: true,
        limit: Some(1),
        skip: 1,
        package: None,
    };
    assert_eq!(
        keys(&s.list_entities("guest", k, &top_page).await.unwrap()),
        ["b"]
    );

    assert_eq!(
        s.count_entities("guest", EntityKind::Trigger, &EntityQuery::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.count_entities("guest", EntityKind::Rule, &EntityQuery::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn activation_filters_order_and_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let records = [
        activation("guest", 1, "a", Some("guest/a"), 100),
        activation("guest", 2, "a", Some("guest/pkg/a"), 200),
        activation("guest", 3, "b", Some("guest/b"), 300),
        activation("guest", 4, "a", None, 300), // ties with 3 on start: recorded later, listed first
        activation("guest", 5, "t", None, 400),
        activation("other", 6, "a", Some("other/a"), 500),
    ];
    for a in &records {
        s.put_activation(a).await.unwrap();
    }
    let q = |name: Option<&str>, since, upto, skip, limit| ActivationQuery {
        name: name.map(String::from),
        since,
        upto,
        skip,
        limit,
    };
    let list = |q: ActivationQuery| {
        let s = s.clone();
        async move { ids(&s.list_activations("guest", &q).await.unwrap()) }
    };

    let all = s
        .list_activations("guest", &ActivationQuery::default())
        .await
        .unwrap();
    assert_eq!(ids(&all), [id(5), id(4), id(3), id(2), id(1)]);
    assert_eq!(all[3], records[1], "full record round-trips");
    assert_eq!(
        s.count_activations("guest", &ActivationQuery::default())
            .await
            .unwrap(),
        5
    );

    // Plain name matches the name column (packaged `a` included), `pkg/a` the path tail only.
    assert_eq!(
        list(q(Some("a"), None, None, 0, None)).await,
        [id(4), id(2), id(1)]
    );
    assert_eq!(list(q(Some("pkg/a"), None, None, 0, None)).await, [id(2)]);
    assert_eq!(
        list(q(Some("pkg/b"), None, None, 0, None)).await,
        Vec::<ActivationId>::new()
    );
    assert_eq!(
        s.count_activations("guest", &q(Some("a"), None, None, 0, None))
            .await
            .unwrap(),
        3
    );

    // since/upto are inclusive.
    assert_eq!(
        list(q(None, Some(200), Some(300), 0, None)).await,
        [id(4), id(3), id(2)]
    );
    assert_eq!(list(q(None, Some(301), None, 0, None)).await, [id(5)]);
    assert_eq!(list(q(None, None, Some(100), 0, None)).await, [id(1)]);
    assert_eq!(
        s.count_activations("guest", &q(None, Some(200), Some(300), 0, None))
            .await
            .unwrap(),
        3
    );

    assert_eq!(list(q(None, None, None, 1, Some(2))).await, [id(4), id(3)]);
    assert_eq!(
        list(q(Some("a"), Some(150), None, 1, Some(10))).await,
        [id(2)]
    );
    assert_eq!(
        s.count_activations("guest", &q(None, None, None, 1, Some(2)))
            .await
            .unwrap(),
        5
    );

    // Namespace isolation.
    assert!(s.get_activation("guest", &id(6)).await.unwrap().is_none());
    assert_eq!(
        s.get_activation("other", &id(6)).await.unwrap().unwrap(),
        records[5]
    );
    assert_eq!(
        s.get_activation("guest", &id(1)).await.unwrap().unwrap(),
        records[0]
    );
    assert_eq!(
        s.count_activations("other", &ActivationQuery::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.count_activations("nobody", &ActivationQuery::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn put_activation_replaces_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut a = activation("guest", 1, "a", Some("guest/a"), 100);
    s.put_activation(&a).await.unwrap();
    a.start = 900;
    a.name = "renamed".into();
    s.put_activation(&a).await.unwrap();
    assert_eq!(
        s.count_activations("guest", &ActivationQuery::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.get_activation("guest", &id(1)).await.unwrap().unwrap(), a);
    let by_name = ActivationQuery {
        name: Some("renamed".into()),
        since: Some(900),
        ..Default::default()
    };
    assert_eq!(
        ids(&s.list_activations("guest", &by_name).await.unwrap()),
        [id(1)]
    );
}

#[tokio::test]
async fn queue_enqueue_claim_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.enqueue(&queued(2, 20)).await.unwrap();
    s.enqueue(&queued(1, 10)).await.unwrap();
    s.enqueue(&queued(3, 30)).await.unwrap();
    assert!(matches!(
        s.enqueue(&queued(1, 99)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.queue_depth().await.unwrap(), 3);
    assert!(s.claim(0).await.unwrap().is_empty());

    let first = s.claim(2).await.unwrap();
    assert_eq!(
        first,
        [queued(1, 10), queued(2, 20)],
        "oldest first, attempts 0 on first delivery"
    );
    let second = s.claim(10).await.unwrap();
    assert_eq!(
        second,
        [queued(3, 30)],
        "claimed items are not handed out again"
    );
    assert!(s.claim(10).await.unwrap().is_empty());
    assert_eq!(
        s.queue_depth().await.unwrap(),
        3,
        "claimed items still count"
    );

    let record = activation("guest", 1, "hello", Some("guest/hello"), 10);
    s.complete(&id(1), &record).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 2);
    assert_eq!(
        s.get_activation("guest", &id(1)).await.unwrap().unwrap(),
        record
    );

    // Release puts an item back, with its attempt counted.
    s.release(&id(2)).await.unwrap();
    s.release(&id(42)).await.unwrap(); // unknown id: no-op
    let again = s.claim(10).await.unwrap();
    assert_eq!(
        again,
        [QueuedInvocation {
            attempts: 1,
            ..queued(2, 20)
        }]
    );
    assert_eq!(s.recover_claimed().await.unwrap(), 2);
    assert_eq!(s.recover_claimed().await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_claims_never_share_an_item() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for n in 0..20 {
        s.enqueue(&queued(n, i64::from(n))).await.unwrap();
    }
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s.claim(3).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|q| q.activation_id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for i in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(i), "item claimed twice");
        }
    }
    assert_eq!(total, 20);
}

#[tokio::test]
async fn crash_with_claimed_items_then_recover() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        s.enqueue(&queued(1, 10)).await.unwrap();
        s.enqueue(&queued(2, 20)).await.unwrap();
        s.enqueue(&queued(3, 30)).await.unwrap();
        assert_eq!(s.claim(2).await.unwrap().len(), 2);
        // dropped here with two items claimed, as if the process died
    }
    let s = open(&dir);
    assert_eq!(s.queue_depth().await.unwrap(), 3);
    assert_eq!(
        s.claim(10).await.unwrap(),
        [queued(3, 30)],
        "claims survive the restart"
    );
    assert_eq!(s.recover_claimed().await.unwrap(), 3);
    let redelivered = s.claim(10).await.unwrap();
    assert_eq!(
        redelivered,
        [
            QueuedInvocation {
                attempts: 1,
                ..queued(1, 10)
            },
            QueuedInvocation {
                attempts: 1,
                ..queued(2, 20)
            },
            QueuedInvocation {
                attempts: 1,
                ..queued(3, 30)
            },
        ]
    );
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let record = activation("guest", 7, "a", Some("guest/a"), 70);
    {
        let s = open(&dir);
        s.put_entity(
            "guest",
            EntityKind::Rule,
            "r",
            &json!({"on": true}),
            5,
            None,
        )
        .await
        .unwrap();
        s.put_entity(
            "guest",
            EntityKind::Rule,
            "r",
            &json!({"on": false}),
            6,
            Some(1),
        )
        .await
        .unwrap();
        s.put_activation(&record).await.unwrap();
        s.enqueue(&queued(8, 80)).await.unwrap();
        s.add_credential(&Credential::new("guest", "u1", "k1", 1))
            .await
            .unwrap();
    }
    // Reopening must not re-run migrations (which would fail on existing tables).
    let s = open(&dir);
    let doc = s
        .get_entity("guest", EntityKind::Rule, "r")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (doc.doc, doc.updated, doc.rev),
        (json!({"on": false}), 6, 2)
    );
    assert_eq!(
        s.get_activation("guest", &id(7)).await.unwrap().unwrap(),
        record
    );
    assert_eq!(s.claim(5).await.unwrap(), [queued(8, 80)]);
    assert_eq!(
        s.credential_by_uuid("u1")
            .await
            .unwrap()
            .unwrap()
            .key_digest,
        crate::key_digest("k1")
    );
}

#[tokio::test]
async fn auth_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let cred = |ns: &str, uuid: &str, key: &str| Credential::new(ns, uuid, key, 7);
    s.add_credential(&cred("zeta", "u3", "k3")).await.unwrap();
    s.add_credential(&cred("guest", "u2", "k2")).await.unwrap();
    s.add_credential(&cred("guest", "u1", "k1")).await.unwrap();
    assert!(matches!(
        s.add_credential(&cred("other", "u1", "x")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.credential_by_uuid("u2").await.unwrap(),
        Some(cred("guest", "u2", "k2"))
    );
    assert_eq!(s.credential_by_uuid("nope").await.unwrap(), None);
    assert_eq!(
        s.credentials_of("guest").await.unwrap(),
        [cred("guest", "u1", "k1"), cred("guest", "u2", "k2")]
    );
    assert!(
        s.credentials_of("other").await.unwrap().is_empty(),
        "failed insert left nothing"
    );
    assert_eq!(s.list_namespaces().await.unwrap(), ["guest", "zeta"]);

    // Rotation: the new digest replaces the old one; with a grace period the old one is kept.
    assert!(
        s.replace_key("u1", &crate::key_digest("n1"), Some(99))
            .await
            .unwrap()
    );
    let c = s.credential_by_uuid("u1").await.unwrap().unwrap();
    assert_eq!(c.key_digest, crate::key_digest("n1"));
    assert_eq!(c.previous_digest, Some(crate::key_digest("k1")));
    assert_eq!(c.previous_expires, Some(99));
    assert!(
        s.replace_key("u1", &crate::key_digest("n2"), None)
            .await
            .unwrap()
    );
    let c = s.credential_by_uuid("u1").await.unwrap().unwrap();
    assert_eq!((c.previous_digest, c.previous_expires), (None, None));
    assert!(!s.replace_key("nope", "d", None).await.unwrap());
    // Revocation.
    assert!(s.delete_credential("u1").await.unwrap());
    assert!(!s.delete_credential("u1").await.unwrap());
    assert_eq!(s.credential_by_uuid("u1").await.unwrap(), None);
}

/// A database from before version 6 keeps working: its plaintext keys become digests and the
/// plaintext is gone from the file.
#[tokio::test]
async fn credentials_migrate_to_digests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        let tx = c.transaction().unwrap();
        for (i, m) in MIGRATIONS[..5].iter().enumerate() {
            let Migration::Sql(sql) = m else { panic!() };
            tx.execute_batch(sql).unwrap();
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .unwrap();
        }
        tx.execute(
            "INSERT INTO credentials (uuid, namespace, key) VALUES ('u1', 'guest', 'PLAINTEXTSECRETKEY0123456789')",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let c = s.credential_by_uuid("u1").await.unwrap().unwrap();
    assert_eq!(c.namespace, "guest");
    assert_eq!(
        c.key_digest,
        crate::key_digest("PLAINTEXTSECRETKEY0123456789")
    );
    drop(s);
    for f in ["old.db", "old.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            assert!(
                !bytes
                    .windows(28)
                    .any(|w| w == b"PLAINTEXTSECRETKEY0123456789"),
                "plaintext key left in {f}"
            );
        }
    }
}

#[tokio::test]
async fn corrupt_documents_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.put_entity("guest", EntityKind::Action, "a", &json!({}), 1, None)
        .await
        .unwrap();
    s.put_activation(&activation("guest", 1, "a", None, 1))
        .await
        .unwrap();
    s.with_writer(|c| {
        c.execute_batch(
            "UPDATE entities SET doc = '{broken'; UPDATE activations SET record = '[]';",
        )
        .unwrap();
        Ok(())
    })
    .await
    .unwrap();
    assert!(matches!(
        s.get_entity("guest", EntityKind::Action, "a").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.list_entities("guest", EntityKind::Action, &EntityQuery::default())
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        s.get_activation("guest", &id(1)).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Group commit: many concurrent writers share batches; a job that fails (a conflict, a disk
/// full, a panic) is rolled back alone and answered with its own error, the others commit.
#[tokio::test]
async fn concurrent_writes_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for n in 0..50 {
        s.put_entity(
            "guest",
            EntityKind::Action,
            &format!("a{n}"),
            &json!({ "n": n }),
            1,
            None,
        )
        .await
        .unwrap();
    }
    // 400 writers at once: even ones create new entities, odd ones re-create existing ones
    // (conflicts), every tenth one panics inside its write.
    let tasks: Vec<_> = (0..400u32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                if i % 10 == 5 {
                    let r: StoreResult<()> = s
                        .write("test panic", Durability::Full, move |c| {
                            c.execute(
                                "INSERT INTO entities (namespace, collection, key, doc, updated, rev)
                                 VALUES ('guest', 'actions', ?1, '{}', 1, 1)",
                                params![format!("panicked{i}")],
                            )
                            .unwrap();
                            panic!("a bug inside a write");
                        })
                        .await;
                    return (i, r.map(|_| 0));
                }
                let key = if i % 2 == 0 { format!("new{i}") } else { format!("a{}", i % 50) };
                let r = s
                    .put_entity("guest", EntityKind::Action, &key, &json!({ "i": i }), 2, None)
                    .await;
                (i, r)
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match (i % 10 == 5, i % 2 == 0) {
            (true, _) => assert!(
                matches!(&r, Err(StoreError::Backend(m)) if m.contains("panicked")),
                "{i}: {r:?}"
            ),
            (false, true) => assert_eq!(r.unwrap(), 1, "{i}"),
            (false, false) => assert!(matches!(r, Err(StoreError::Conflict(_))), "{i}: {r:?}"),
        }
    }
    let q = EntityQuery {
        limit: None,
        ..Default::default()
    };
    let all = s
        .list_entities("guest", EntityKind::Action, &q)
        .await
        .unwrap();
    // 50 originals + the even writers that did not panic (i % 10 == 5 is always odd).
    assert_eq!(all.len(), 50 + 200, "{:?}", keys(&all));
    assert!(all.iter().all(|d| !d.key.starts_with("panicked")));
    // Originals untouched by the conflicting writers.
    let a7 = s
        .get_entity("guest", EntityKind::Action, "a7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a7.doc, json!({ "n": 7 }));
    // The writer thread is still healthy.
    s.enqueue(&queued(1, 1)).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 1);
}

#[tokio::test]
async fn full_disk_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.enqueue(&queued(1, 10)).await.unwrap();
    assert_eq!(s.claim(1).await.unwrap().len(), 1);
    // Cap the database at its current size: any write needing a new page gets SQLITE_FULL.
    s.with_writer(|c| {
        let pages: i64 = c
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        c.pragma_update(None, "max_page_count", pages).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    let big = json!({ "blob": "x".repeat(200_000) });

    match s
        .put_entity("guest", EntityKind::Action, "big", &big, 1, None)
        .await
    {
        Err(StoreError::Full(msg)) => assert!(
            msg.contains("put_entity") && msg.contains("disk holding the store is full"),
            "{msg}"
        ),
        other => panic!("expected a full-disk error, got {other:?}"),
    }
    assert!(
        s.get_entity("guest", EntityKind::Action, "big")
            .await
            .unwrap()
            .is_none()
    );

    let mut record = activation("guest", 1, "a", None, 1);
    record.logs = vec!["y".repeat(200_000)];
    assert!(matches!(
        s.complete(&id(1), &record).await,
        Err(StoreError::Full(_))
    ));
    assert!(s.get_activation("guest", &id(1)).await.unwrap().is_none());
    assert_eq!(
        s.queue_depth().await.unwrap(),
        1,
        "queue entry kept when the record could not be stored"
    );

    // Once space is back, the same writes succeed.
    s.with_writer(|c| {
        c.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        Ok(())
    })
    .await
    .unwrap();
    s.complete(&id(1), &record).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    assert_eq!(
        s.get_activation("guest", &id(1)).await.unwrap().unwrap(),
        record
    );
    assert_eq!(
        s.put_entity("guest", EntityKind::Action, "big", &big, 1, None)
            .await
            .unwrap(),
        1
    );
}

/// A code-action record with a memory limit, duration and status, as the controller writes it.
fn run(n: u32, path: &str, start: i64, ms: i64, memory: u64, code: u8, kind: &str) -> Activation {
    let mut a = activation(
        "guest",
        n,
        path.rsplit('/').next().unwrap(),
        Some(path),
        start,
    );
    a.end = start + ms;
    a.duration = Some(ms);
    a.annotations.set("kind", json!(kind));
    a.annotations.set(
        "limits",
        json!({"timeout": 60000, "memory": memory, "logs": 10, "concurrency": 1}),
    );
    a.response = ActivationResponse::new(nimbus_model::ResponseStatus::from_code(code), json!({}));
    a
}

#[tokio::test]
async fn usage_sums_mb_ms_per_function_and_day() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let day = 86_400_000;
    let records = [
        run(1, "guest/hello", 10 * day + 5, 100, 256, 0, "nodejs:20"),
        run(2, "guest/hello", 10 * day + 9, 7, 256, 1, "nodejs:20"),
        run(3, "guest/pkg/big", 11 * day, 1500, 1024, 2, "python:3"),
        run(4, "guest/seq", 11 * day + 1, 1600, 256, 0, "sequence"),
        run(5, "guest/hello", 12 * day, 1, 128, 0, "nodejs:20"),
    ];
    for r in &records {
        s.put_activation(r).await.unwrap();
    }
    let mut trig = activation("guest", 6, "t", Some("guest/t"), 11 * day);
    trig.annotations.set("kind", json!("trigger"));
    trig.end = 0;
    trig.duration = None;
    s.put_activation(&trig).await.unwrap();
    // Another namespace never shows up.
    let mut other = run(7, "other/hello", 11 * day, 1000, 256, 0, "nodejs:20");
    other.namespace = "other".into();
    s.put_activation(&other).await.unwrap();

    let u = s.usage("guest", None, Some(12 * day - 1)).await.unwrap();
    assert_eq!(
        u.functions,
        vec![
            UsageRow {
                name: "hello".into(),
                kind: "nodejs:20".into(),
                invocations: 2,
                errors: 1,
                duration_ms: 107,
                mb_ms: 107 * 256,
            },
            UsageRow {
                name: "pkg/big".into(),
                kind: "python:3".into(),
                invocations: 1,
                errors: 1,
                duration_ms: 1500,
                mb_ms: 1500 * 1024,
            },
            UsageRow {
                name: "seq".into(),
                kind: "sequence".into(),
                invocations: 1,
                errors: 0,
                duration_ms: 1600,
                mb_ms: 0,
            },
        ]
    );
    assert_eq!(
        u.days
            .iter()
            .map(|d| (d.day, d.invocations, d.mb_ms))
            .collect::<Vec<_>>(),
        vec![(10, 2, 107 * 256), (11, 2, 1500 * 1024)]
    );
    let all = s.usage("guest", Some(12 * day), None).await.unwrap();
    assert_eq!(all.functions.len(), 1);
    assert_eq!(all.functions[0].mb_ms, 128);
}

#[tokio::test]
async fn usage_migration_backfills_existing_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    let rec = run(1, "guest/hello", 1000, 250, 512, 2, "nodejs:20");
    {
        // A database at schema version 1 holding one record.
        let c = Connection::open(&path).unwrap();
        let Migration::Sql(first) = MIGRATIONS[0] else {
            panic!("the first migration is SQL")
        };
        c.execute_batch(first).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO activations (namespace, activation_id, name, path_tail, start_ms, end_ms, record)
             VALUES ('guest', ?1, 'hello', 'hello', 1000, 1250, ?2)",
            params![rec.activation_id.as_str(), serde_json::to_string(&rec).unwrap()],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let u = s.usage("guest", None, None).await.unwrap();
    assert_eq!(u.functions.len(), 1);
    let f = &u.functions[0];
    assert_eq!(
        (f.invocations, f.errors, f.duration_ms, f.mb_ms),
        (1, 1, 250, 250 * 512)
    );
    assert_eq!(f.kind, "nodejs:20");
}
