//! What a container platform does to the binary: Kubernetes service-link variables in the
//! environment, librdkafka properties from the environment, and the health probe.

use std::process::{Command, Output};

use crate::harness::{Hub, HubEnv, binary};

/// `fhir-hub <args>` in an environment of exactly `vars` (and PATH), in an empty directory.
fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(binary())
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

/// A Service named `hub` puts `HUB_PORT=tcp://…` and friends into every pod of its
/// namespace: before, start-up failed on "unknown field `port`".
#[test]
fn kubernetes_service_links_do_not_stop_start_up() {
    let links = [
        ("HUB_PORT", "tcp://10.96.0.7:8080"),
        ("HUB_PORT_8080_TCP", "tcp://10.96.0.7:8080"),
        ("HUB_PORT_8080_TCP_PROTO", "tcp"),
        ("HUB_PORT_8080_TCP_PORT", "8080"),
        ("HUB_PORT_8080_TCP_ADDR", "10.96.0.7"),
        ("HUB_SERVICE_HOST", "10.96.0.7"),
        ("HUB_SERVICE_PORT", "8080"),
        ("HUB_SERVICE_PORT_HTTP", "8080"),
        ("HUB_GRPC_PORT_8081_TCP_ADDR", "10.96.0.8"),
        ("HUB_SERVER__SHUTDOWN_GRACE_SECS", "7"),
    ];
    let out = run(&["config"], &links);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["server"]["shutdown_grace_secs"], 7,
        "real keys still apply"
    );

    // A misspelt variable (one underscore) is not silently ignored.
    let out = run(&["config"], &[("HUB_DATABASE_URL", "postgres://x/y")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HUB_DATABASE_URL") && err.contains("HUB_<SECTION>__<KEY>"),
        "{err}"
    );
}

/// librdkafka's dotted property names from the environment: before, the variable made the
/// key `sasl_password`, which librdkafka refuses, so a password could only live in a file.
#[test]
fn kafka_client_properties_come_from_the_environment() {
    let out = run(
        &["config"],
        &[
            ("HUB_KAFKA__CLIENT__SASL_PASSWORD", "from-a-secret"),
            ("HUB_KAFKA__CLIENT__SASL_USERNAME", "hub"),
            ("HUB_KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = &config["kafka"]["client"];
    assert_eq!(client["sasl.username"], "hub", "{client}");
    assert_eq!(client["security.protocol"], "SASL_SSL", "{client}");
    assert_eq!(
        client["sasl.password"], "***",
        "set, and redacted: {client}"
    );
    assert!(client.get("sasl_password").is_none(), "{client}");
}

/// `fhir-hub health` (the image's HEALTHCHECK): 0 while the hub answers, 1 once it is gone.
#[tokio::test]
async fn the_health_subcommand_probes_the_listener() {
    let mut hub = Hub::start(HubEnv::default()).await;
    let listen = hub.url.trim_start_matches("http://").to_owned();
    let probe = move |ready: bool| {
        let mut args = vec!["health"];
        if ready {
            args.push("--ready");
        }
        run(&args, &[("HUB_SERVER__LISTEN", &listen)])
    };
    for ready in [false, true] {
        let probe = probe.clone();
        let out = tokio::task::spawn_blocking(move || probe(ready))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "ready={ready}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(hub.terminate().success());
    let out = tokio::task::spawn_blocking(move || probe(false))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unhealthy") && err.contains("/health"),
        "{err}"
    );
}
