//! The command line and the process as an operator meets them (issue 30): output into a pipe closed early, the help
//! and environment variables, `config check`, host names to listen on, SIGHUP, uncoloured
//! logs, and errors that name their cause (a database refusing connections; a webhook's
//! refused connection, TLS failure, timeout and unknown name told apart).

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Hub, HubEnv, binary, free_port};

/// `fhir-hub ARGS` in `dir` with these variables and no inherited `HUB_*` one.
fn command(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("HUB_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

fn run(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    command(dir, args, vars)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run with a standard output whose reader closed before the command started (what
/// `| head -1` becomes once head has its line): the command must end quietly with exit 0.
fn with_closed_stdout(dir: &std::path::Path, args: &[&str]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = command(dir, args, &[])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`fhir-hub {}` into a closed pipe: {}\n{stderr}",
        args.join(" "),
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "`fhir-hub {}` into a closed pipe said: {stderr}",
        args.join(" ")
    );
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    with_closed_stdout(dir.path(), &["config"]);
    with_closed_stdout(dir.path(), &["config", "check"]);
    with_closed_stdout(dir.path(), &["fhirpath", "-e", "1 | 2 | 3"]);
    with_closed_stdout(dir.path(), &["keys", "list", "--data-dir", data]);
    let observations: String = (0..2000)
        .map(|i| {
            format!("{{\"resourceType\":\"Observation\",\"id\":\"o{i}\",\"status\":\"final\"}}\n")
        })
        .collect();
    let input = dir.path().join("observations.ndjson");
    std::fs::write(&input, observations).unwrap();
    with_closed_stdout(
        dir.path(),
        &[
            "match",
            "--criteria",
            "Observation?status=final",
            "--input",
            input.to_str().unwrap(),
        ],
    );
}

#[test]
fn help_names_each_flags_environment_variable_and_the_variables_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["serve", "--help"],
        &[("HUB_DATABASE__URL", "postgres://u:hidden-password@db/hub")],
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "HUB_SERVER__LISTEN",
        "HUB_SERVER__ROLES",
        "HUB_DATABASE__URL",
        "HUB_KAFKA__BROKERS",
        "HUB_SERVER__DATA_DIR",
    ] {
        assert!(help.contains(var), "--help does not name {var}:\n{help}");
    }
    assert!(!help.contains("hidden-password"), "{help}");

    // roles from the environment, comma-separated as --roles takes them
    let out = run(
        dir.path(),
        &["config"],
        &[("HUB_SERVER__ROLES", "matcher,delivery")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["server"]["roles"],
        serde_json::json!(["matcher", "delivery"])
    );
}

#[test]
fn config_check_lists_every_problem_or_summarises_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nlisten = \"nowhere\"\n[matcher]\nbatch_size = 0\n",
    )
    .unwrap();
    let out = run(dir.path(), &["config", "check"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains("server.listen 'nowhere'"), "{stderr}");
    assert!(
        stderr.contains("batch sizes must be at least 1"),
        "{stderr}"
    );

    // a variable naming no key (a Kubernetes service link) is named as such
    std::fs::remove_file(dir.path().join("config.toml")).unwrap();
    let out = run(
        dir.path(),
        &["config", "check"],
        &[("HUB_SERVER__LISTN", "127.0.0.1:8080")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listn") && stderr.contains("HUB_"),
        "{stderr}"
    );

    let out = run(
        dir.path(),
        &["config", "check"],
        &[
            (
                "HUB_DATABASE__URL",
                "postgres://hub:s3cret@db.example:6543/hub",
            ),
            ("HUB_SERVER__ROLES", "matcher,delivery"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(stdout.contains("matcher, delivery"), "{stdout}");
    assert!(
        stdout.contains("postgres://hub:***@db.example:6543/hub"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

#[tokio::test]
async fn listens_on_a_host_name() {
    let hub = Hub::start(HubEnv::default().listen("localhost:0")).await;
    let (status, _) = hub.get("/health").await;
    assert_eq!(status, 200);
}

#[test]
fn a_database_refusing_connections_is_named_with_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://root@127.0.0.1:{port}/test");
    let out = run(dir.path(), &["keys", "list", "--database-url", &url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("refused"),
        "the cause is not named: {stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
}

#[tokio::test]
async fn sighup_drains_like_sigterm_and_the_log_has_no_colours() {
    let mut hub = Hub::start(HubEnv::default()).await;
    let (status, _) = hub.get("/health").await;
    assert_eq!(status, 200);
    let pid = hub.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = hub.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 40 s of SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "SIGHUP: {status}");
    let log = std::fs::read_to_string(hub.data_dir.path().join("hub.log")).unwrap();
    assert!(
        log.contains("shutdown signal received") && log.contains("SIGHUP"),
        "{log}"
    );
    // stderr is a file here, not a terminal
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log}"
    );
}

/// The `last-error` part of a `$status` answer.
fn last_error(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) if o.get("name").and_then(Value::as_str) == Some("last-error") => o
            .get("valueString")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Value::Object(o) => o.values().find_map(last_error),
        Value::Array(a) => a.iter().find_map(last_error),
        _ => None,
    }
}

/// An HTTPS server on loopback whose certificate (for 127.0.0.1) is from `pki`'s test CA.
async fn untrusted_tls_server(pki: &std::path::Path) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // the client refuses the certificate: the handshake fails on its side
            tokio::spawn(async move { drop(acceptor.accept(tcp).await) });
        }
    });
    addr
}

/// A TCP server on loopback: `speak` gets each connection.
fn tcp_server(speak: fn(std::net::TcpStream)) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || speak(stream));
        }
    });
    port
}

#[tokio::test]
async fn webhook_connection_errors_carry_their_cause() {
    let hub = Hub::start(HubEnv::default().var("HUB_DELIVERY__REQUEST_TIMEOUT_MS", "1500")).await;
    // nothing listens
    let refused = format!("http://127.0.0.1:{}/hook", free_port());
    // plain HTTP where TLS is expected
    let plain = tcp_server(|mut s| {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    });
    let tls = format!("https://127.0.0.1:{plain}/hook");
    // accepts, never answers
    let silent = tcp_server(|s| {
        std::thread::sleep(Duration::from_secs(120));
        drop(s);
    });
    let timeout = format!("http://127.0.0.1:{silent}/hook");
    // TLS with a certificate for 127.0.0.1 from a CA the hub does not trust
    let pki = tempfile::tempdir().unwrap();
    crate::mtls::make_pki(pki.path());
    let untrusted = format!("https://{}/hook", untrusted_tls_server(pki.path()).await);

    let mut errors = Vec::new();
    for endpoint in [&refused, &tls, &timeout, &untrusted] {
        let id = hub
            .subscribe("Observation?code=2345-7", endpoint, false)
            .await;
        let sub = hub.wait_status(&id, "error").await;
        let error = sub["error"].as_str().unwrap_or_default().to_owned();
        let (_, status) = hub.get(&format!("/fhir/Subscription/{id}/$status")).await;
        assert_eq!(
            last_error(&status).as_deref(),
            Some(error.as_str()),
            "$status: {status}"
        );
        errors.push(error);
    }
    eprintln!(
        "refused: {}\ntls: {}\ntimeout: {}\nuntrusted: {}",
        errors[0], errors[1], errors[2], errors[3]
    );
    assert!(errors[0].contains("Connection refused"), "{}", errors[0]);
    assert!(
        errors[1].to_lowercase().contains("tls")
            || errors[1].contains("InvalidContentType")
            || errors[1].contains("corrupt message"),
        "{}",
        errors[1]
    );
    assert!(errors[2].contains("timed out"), "{}", errors[2]);
    assert!(
        errors[3].contains("invalid peer certificate") && errors[3].contains("UnknownIssuer"),
        "{}",
        errors[3]
    );
    let distinct: std::collections::BTreeSet<&String> = errors.iter().collect();
    assert_eq!(distinct.len(), errors.len(), "{errors:?}");

    // a name that does not resolve is refused when the subscription is written
    let (code, body) = hub
        .post_json(
            "/fhir/Subscription",
            &serde_json::json!({"resourceType": "Subscription", "status": "requested",
                "reason": "e2e", "criteria": "Observation?code=2345-7",
                "channel": {"type": "rest-hook", "endpoint": "http://nowhere.invalid/hook"}}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("does not resolve"), "{body}");

    let log = std::fs::read_to_string(hub.data_dir.path().join("hub.log")).unwrap();
    assert!(
        log.contains("Connection refused"),
        "the log lacks the cause"
    );
}
