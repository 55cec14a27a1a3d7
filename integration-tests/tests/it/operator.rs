//! Operator-side loss traps: what a restore, a second process or a busy cluster must not do
//! silently.

use std::time::Duration;

use crate::harness::{Hub, HubEnv};

/// Start the binary on `dir` and wait for it to exit: it is expected to refuse to start. One
/// that is still running after 60 s is serving: killed, and the test fails.
async fn refused_start(dir: &std::path::Path) -> String {
    let dir = dir.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(crate::harness::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env("HUB_GRPC__LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the hub should have refused to start, but it serves");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// A second `serve` on the same embedded data directory is refused at start, naming the
/// file another process serves; the first keeps serving. (Before, both started and both
/// matched and delivered the same subscriptions.)
#[tokio::test]
async fn a_second_serve_on_the_same_data_directory_is_refused() {
    let hub = Hub::start(HubEnv::default()).await;
    let stderr = refused_start(hub.data_dir.path()).await;
    assert!(
        stderr.contains("another fhir-hub process is serving") && stderr.contains("hub.db"),
        "{stderr}"
    );
    let (status, body) = hub.get("/health").await;
    assert_eq!(status, 200, "{body}");
}

/// A SQLite backup restored without its `secrets.key`: the hub used to make a new key, skip
/// every subscription it could no longer open, show them `active` and pass `/ready`. Now it
/// refuses to start, says why, and leaves no new key behind; with the original key put back
/// it starts and the subscription is there. A different key in its place is refused too.
#[tokio::test]
async fn a_store_restored_without_its_secrets_key_is_refused_at_start() {
    let mut hub = Hub::start(HubEnv::default()).await;
    let id = hub
        .subscribe(
            "Observation?code=http://loinc.org|2345-7",
            "http://127.0.0.1:9/hook",
            true,
        )
        .await;
    assert!(hub.terminate().success());
    let data_dir = std::mem::replace(&mut hub.data_dir, tempfile::tempdir().unwrap());
    drop(hub);
    let key_path = data_dir.path().join("secrets.key");
    let key = std::fs::read(&key_path).unwrap();

    // the restore without the key
    std::fs::remove_file(&key_path).unwrap();
    let stderr = refused_start(data_dir.path()).await;
    assert!(
        stderr.contains("secrets.key") && stderr.contains("put the original secrets.key back"),
        "{stderr}"
    );
    assert!(
        !key_path.exists(),
        "the refused start left a new key behind"
    );

    // another key in its place
    std::fs::write(&key_path, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let stderr = refused_start(data_dir.path()).await;
    assert!(
        stderr.contains("is not the key this store's secrets were sealed with"),
        "{stderr}"
    );

    // the original key back: it starts and serves the subscription
    std::fs::write(&key_path, key).unwrap();
    let hub = Hub::start_in(HubEnv::default(), data_dir).await;
    let (status, body) = hub.get(&format!("/fhir/Subscription/{id}")).await;
    assert_eq!(status, 200, "{body}");
}
