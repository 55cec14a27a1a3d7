//! What a producer writes to the topic reaches the store only as data the store takes, and
//! what the store refuses is told apart from a store that is down (so the matcher sets the
//! record aside instead of retrying it for ever). On both backends.

use hub_store::{NewQuarantined, QuarantineStage, Sanitized, Store, StoreError};

use crate::contract::{note, write};

/// Producer text of every awkward kind: NUL, invalid UTF-8, control characters, huge.
fn awkward() -> Vec<Vec<u8>> {
    vec![
        b"x\0".to_vec(),
        b"\0\0\0".to_vec(),
        b"k\xff\xfe\xc3".to_vec(),
        b"\x1b[2J\r\nforged log line\x7f\xc2\x85".to_vec(),
        "\u{202e}\u{2028}".as_bytes().to_vec(),
        vec![b'k'; 1 << 20],
        vec![0; 100_000],
    ]
}

async fn quarantine_takes_any_producer_text(store: Store) {
    let texts = awkward();
    let records: Vec<NewQuarantined> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| NewQuarantined {
            source: Sanitized::new(&format!("fhir.changes/0@{i}")),
            tenant: Some(Sanitized::from_bytes(t)),
            event_id: Some(Sanitized::from_bytes(t)),
            record_key: Some(Sanitized::from_bytes(t)),
            // the bytes as read, whatever they are
            payload: t.clone(),
            stage: QuarantineStage::Parse,
            reason: Sanitized::new(&format!(
                "'action' must be create, update or delete, not '{}'",
                String::from_utf8_lossy(t)
            )),
        })
        .collect();
    store.quarantine(&records).await.unwrap();
    let back = store.list_quarantined(None, 0, 100).await.unwrap();
    assert_eq!(back.len(), records.len());
    for (got, want) in back.iter().zip(&records) {
        assert_eq!(got.record, *want);
        for text in [&got.record.reason, got.record.record_key.as_ref().unwrap()] {
            assert!(
                text.len() <= hub_store::MAX_SANITIZED_BYTES,
                "{}",
                text.len()
            );
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }
}

#[tokio::test]
async fn sqlite_quarantine_takes_any_producer_text() {
    let (store, _dir) = crate::sqlite().await;
    quarantine_takes_any_producer_text(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_quarantine_takes_any_producer_text() {
    let Some(store) = crate::postgres().await else {
        return;
    };
    quarantine_takes_any_producer_text(store).await;
}

/// A write the database refuses (here a constraint an operator could have added, on either
/// backend) is `Refused`, not `Unavailable` or a generic error: retrying cannot help.
async fn a_refused_write_is_told_apart(store: Store, refuse: impl AsyncFnOnce()) {
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    refuse().await;
    let mut bad = note("s1", "e1");
    bad.focus_id = "refused".into();
    match store.append_notifications(&[bad]).await {
        Err(StoreError::Refused(why)) => assert!(!why.contains('\0'), "{why}"),
        other => panic!("{other:?}"),
    }
    // the next event is taken as ever, numbered 1: the refused one left nothing
    let ok = store
        .append_notifications(&[note("s1", "e2")])
        .await
        .unwrap();
    assert_eq!(ok[0].event_number, 1);
}

#[tokio::test]
async fn sqlite_a_refused_write_is_told_apart() {
    let (store, dir) = crate::sqlite().await;
    let raw = crate::raw_sqlite(&dir).await;
    a_refused_write_is_told_apart(store, async || {
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON logged_events
             WHEN NEW.focus_id = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&raw)
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_refused_write_is_told_apart() {
    let Some((store, url)) = crate::postgres_with_url().await else {
        return;
    };
    a_refused_write_is_told_apart(store, async || {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query(
            "ALTER TABLE logged_events ADD CONSTRAINT refuse CHECK (focus_id <> 'refused')",
        )
        .execute(&mut c)
        .await
        .unwrap();
    })
    .await;
}

/// PostgreSQL's `text` takes no NUL character: a NUL that reached a column is `Refused`
/// (the matcher quarantines the event), where it used to be retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_nul_in_text_is_refused() {
    let Some(store) = crate::postgres().await else {
        return;
    };
    store
        .create_subscription("default", "s1", &write("active"))
        .await
        .unwrap();
    let mut bad = note("s1", "e1");
    bad.focus_version = Some("1\0".into());
    assert!(
        matches!(
            store.append_notifications(&[bad]).await,
            Err(StoreError::Refused(_))
        ),
        "a NUL is refused"
    );
    // `\u0000` inside a resource is JSON escape text, which `text` takes as it is
    let mut escaped = note("s1", "e2");
    escaped.resource =
        Some(r#"{"resourceType":"Observation","id":"o1","note":[{"text":"a\u0000b"}]}"#.into());
    store
        .append_notifications(&[escaped.clone()])
        .await
        .unwrap();
    let key = store
        .get_subscription("default", "s1")
        .await
        .unwrap()
        .unwrap()
        .log_key;
    let read = store.notifications_after(key, 0, 10).await.unwrap();
    assert_eq!(read[0].note, escaped);
}
