//! `/ready`: ready while the store and the log answer and the matcher comes round its loop.

use axum::http::StatusCode;

use crate::spawn_hub_with;

#[tokio::test]
async fn a_stalled_matcher_makes_the_process_unready() {
    let t = spawn_hub_with(|c| c.server.ready_stall_secs = 0).await;
    let a = t.get("/ready").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body["components"]["matcher"]["note"],
        "no matcher in this process"
    );
    // a matcher that came round its loop once and then nothing, past the limit
    t.hub.metrics.matcher_beat();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let a = t.get("/ready").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.body["components"]["matcher"]["status"], "fail");
    assert!(
        a.body["components"]["matcher"]["error"]
            .as_str()
            .unwrap()
            .contains("has not come round its loop"),
        "{}",
        a.body
    );
    // /health says only whether the store and the log answer
    assert_eq!(t.get("/health").await.status, StatusCode::OK);
}
