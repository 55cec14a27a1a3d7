//! Retention runs in every process, whatever its roles: an api+matcher deployment (stream
//! subscribers only, no delivery role) purges old notifications too.

use serde_json::json;

use crate::harness::{Hub, HubEnv, glucose};

async fn logged_rows(db: &std::path::Path) -> i64 {
    let url = format!("sqlite://{}", db.display());
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM notification_log")
        .fetch_one(&raw)
        .await
        .unwrap();
    raw.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_matcher_process_purges_old_notifications() {
    let roles = || HubEnv::default().arg("--roles").arg("api,matcher");
    let mut hub = Hub::start(roles()).await;
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &json!({"resourceType": "Subscription", "status": "requested", "reason": "e2e",
                    "criteria": "Observation?code=2345-7", "channel": {"type": "websocket"}}),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    hub.post_json("/events", &glucose("old-1")).await;
    hub.wait_events(&id, 1).await;
    assert!(hub.terminate().success());
    let data_dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);

    // the notification is years older than retention_days
    let db = data_dir.path().join("hub.db");
    assert_eq!(logged_rows(&db).await, 1);
    let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE logged_events SET logged_at = '2001-01-01T00:00:00Z'")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;

    // housekeeping runs at start, then hourly
    let _hub = Hub::start_in(roles(), data_dir).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while logged_rows(&db).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an api+matcher process never purged the old notification"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
