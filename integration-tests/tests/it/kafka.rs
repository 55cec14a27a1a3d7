//! The Kafka + PostgreSQL configuration end to end, against a real broker process (tansu).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::harness::{
    Hub, HubEnv, envelope, free_port, glucose, other_observation, require_external,
};
use crate::receiver::TestReceiver;

async fn produce(brokers: &str, topic: &str, key: &str, value: &Value) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let payload = value.to_string();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// A hub on the test broker (its own changes topic and group) and a fresh PostgreSQL schema;
/// `None` when those are not available (and not required).
async fn kafka_hub() -> Option<(String, String, Hub)> {
    let brokers = require_external("FHIR_HUB_TEST_KAFKA")?;
    let pg = require_external("FHIR_HUB_TEST_DATABASE_URL")?;
    let topic = format!("fhir.changes.{}", uuid::Uuid::new_v4().simple());
    let env = HubEnv::default()
        .arg("--kafka-brokers")
        .arg(&brokers)
        .arg("--database-url")
        .arg(&hub_store::fresh_postgres_schema(&pg, "e2e").await.unwrap())
        .var("HUB_LOG__CHANGES_TOPIC", &topic)
        .var("HUB_KAFKA__PARTITIONS", "3")
        .var("HUB_KAFKA__MATCHER_GROUP", &format!("g-{topic}"));
    let hub = Hub::start(env).await;
    Some((brokers, topic, hub))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_written_to_kafka_reaches_the_rest_hook() {
    let Some((brokers, topic, hub)) = kafka_hub().await else {
        return;
    };
    let (_, health) = hub.get("/health").await;
    assert_eq!(health["components"]["log"]["backend"], "kafka", "{health}");
    assert_eq!(
        health["components"]["store"]["backend"], "postgres",
        "{health}"
    );

    let mut rx = TestReceiver::start().await;
    hub.subscribe("Observation?code=http://loinc.org|2345-7", &rx.url, true)
        .await;

    // Another system writes straight to the topic: a bare resource and an envelope.
    produce(&brokers, &topic, "Observation/k0", &other_observation("k0")).await;
    produce(&brokers, &topic, "Observation/k1", &glucose("k1")).await;
    produce(
        &brokers,
        &topic,
        "Observation/k2",
        &envelope(&glucose("k2"), "update"),
    )
    .await;

    let mut paths = vec![
        rx.next(Duration::from_secs(60)).await.path,
        rx.next(Duration::from_secs(30)).await.path,
    ];
    paths.sort();
    assert_eq!(paths, vec!["/hook/Observation/k1", "/hook/Observation/k2"]);

    // The hub's own ingest API publishes to the same topic.
    let (status, _) = hub.post_json("/events", &glucose("k3")).await;
    assert_eq!(status, 202);
    assert_eq!(
        rx.next(Duration::from_secs(30)).await.path,
        "/hook/Observation/k3"
    );
    rx.assert_quiet(Duration::from_millis(1000)).await;
}

/// A topic-based subscription fed by bare resources that another system writes to Kafka
/// (no envelope, no `previous`): "became final" fires once, numbered 1, with PostgreSQL
/// keeping the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_resources_on_kafka_drive_a_topic_subscription() {
    let Some((brokers, topic, hub)) = kafka_hub().await else {
        return;
    };
    let (c, _) = hub
        .post_json("/fhir/SubscriptionTopic", &crate::topics::topic())
        .await;
    assert_eq!(c, 201);
    let mut rx = TestReceiver::start().await;
    let (c, s) = hub
        .post_json(
            "/fhir/Subscription",
            &crate::topics::subscription(&rx.url, Some("full-resource"), Some("patient=Patient/k")),
        )
        .await;
    assert_eq!(c, 201, "{s}");
    hub.wait_status(s["id"].as_str().unwrap(), "active").await;

    let mut v1 = crate::topics::obs("kt1", "preliminary", "Patient/k");
    v1["meta"] = serde_json::json!({"versionId": "1"});
    let mut v2 = crate::topics::obs("kt1", "final", "Patient/k");
    v2["meta"] = serde_json::json!({"versionId": "2"});
    let mut v3 = v2.clone();
    v3["meta"] = serde_json::json!({"versionId": "3"});
    for v in [&v1, &v2, &v3] {
        produce(&brokers, &topic, "Observation/kt1", v).await;
    }
    let r = rx.next(Duration::from_secs(30)).await;
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    let params = b["entry"][0]["resource"]["parameter"].as_array().unwrap();
    let ev = params
        .iter()
        .find(|p| p["name"] == "notification-event")
        .unwrap();
    assert_eq!(ev["part"][0]["valueString"], "1");
    assert_eq!(b["entry"][1]["resource"]["meta"]["versionId"], "2");
    rx.assert_quiet(Duration::from_secs(2)).await;
}

/// A TLS front for a broker: each connection's TLS is ended here (a certificate for
/// 127.0.0.1 from `pki`'s test CA) and its bytes go on to `broker` in the clear. Returns its
/// address and how many TLS handshakes it completed.
async fn tls_front(
    pki: &std::path::Path,
    broker: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
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
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(mut plain) = tokio::net::TcpStream::connect(broker).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, handshakes)
}

/// `<pki>/hub.toml`: Kafka over TLS trusting `<pki>/ca.pem`, with `extra` lines of
/// `[kafka.client]`.
fn tls_config(pki: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = pki.join("hub.toml");
    let ca = pki.join("ca.pem");
    let toml = format!(
        "[kafka.client]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n{extra}",
        ca.display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// A hub in Kafka mode with `config`, on `brokers` (one partition), that takes a glucose
/// Observation `id` through its API and delivers it to a rest-hook subscription: the hub and
/// that subscription's receiver.
async fn delivers_one_event(
    config: &std::path::Path,
    brokers: &str,
    id: &str,
) -> (Hub, TestReceiver) {
    let env = HubEnv::default()
        .arg("--config")
        .arg(&config.display().to_string())
        .arg("--kafka-brokers")
        .arg(brokers)
        .var("HUB_KAFKA__PARTITIONS", "1");
    let hub = Hub::start(env).await;
    let (_, health) = hub.get("/health").await;
    assert_eq!(health["components"]["log"]["backend"], "kafka", "{health}");
    let mut rx = TestReceiver::start().await;
    hub.subscribe("Observation?code=http://loinc.org|2345-7", &rx.url, true)
        .await;
    let (status, _) = hub.post_json("/events", &glucose(id)).await;
    assert_eq!(status, 202);
    assert_eq!(
        rx.next(Duration::from_secs(60)).await.path,
        format!("/hook/Observation/{id}")
    );
    (hub, rx)
}

/// `fhir-hub publish` of one glucose Observation `id` with `config` to `brokers`, which must
/// fail within 60 s (request and message timeouts of 3 s); returns its stderr.
async fn refused_publish(config: &std::path::Path, brokers: &str, id: &str) -> String {
    let input = config.with_extension("ndjson");
    std::fs::write(&input, format!("{}\n", glucose(id))).unwrap();
    let out = tokio::process::Command::new(crate::harness::binary())
        .arg("--config")
        .arg(config)
        .args(["--kafka-brokers", brokers])
        .args(["publish", "--quiet", "--input"])
        .arg(&input)
        .env("HUB_KAFKA__REQUEST_TIMEOUT_MS", "3000")
        .env("RUST_BACKTRACE", "0")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("publish gives up within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "publish was refused: {stderr}");
    stderr
}

/// A tansu broker of the test's own, its data in a directory the test keeps; killed on drop.
struct OwnBroker {
    child: std::process::Child,
}

impl OwnBroker {
    /// `tansu broker` listening on `port` of 127.0.0.1 and advertising `advertised`, with
    /// its SQLite storage in `dir` and `extra` arguments; returns once the port takes
    /// connections.
    async fn start(
        tansu: &str,
        dir: &std::path::Path,
        port: u16,
        advertised: &str,
        extra: &[&str],
    ) -> Self {
        let child = std::process::Command::new(tansu)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised}"))
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(extra)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kafka over TLS, as managed services (MSK, Confluent Cloud, Aiven) require: the hub
/// reaches the broker only through a TLS front whose certificate a private CA signed (the
/// broker advertises the front's address, so every connection, bootstrap and data, is TLS),
/// with `security.protocol = "SSL"` and `ssl.ca.location` in `[kafka.client]`. An event sent
/// to the hub's API is published, matched and delivered through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_reaches_the_rest_hook() {
    let Some(tansu) = require_external("FHIR_HUB_TANSU") else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    crate::mtls::make_pki(pki.path());
    // the front's port is picked first: the broker advertises it
    let plain_port = free_port();
    let (front, handshakes) = tls_front(pki.path(), ([127, 0, 0, 1], plain_port).into()).await;
    let dir = tempfile::tempdir().unwrap();
    let _broker = OwnBroker::start(&tansu, dir.path(), plain_port, &front.to_string(), &[]).await;
    let config = tls_config(pki.path(), "");
    let (_hub, mut rx) = delivers_one_event(&config, &front.to_string(), "tls1").await;
    assert!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the hub reached the broker over TLS"
    );

    // A broker whose certificate another CA signed is refused: `fhir-hub publish` trusting
    // only that other CA fails, says why, and nothing it tried to send is delivered.
    let other = tempfile::tempdir().unwrap();
    crate::mtls::make_pki(other.path());
    let wrong = tls_config(other.path(), "\"message.timeout.ms\" = \"3000\"\n");
    let stderr = refused_publish(&wrong, &front.to_string(), "tls2").await;
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // librdkafka retries the handshake every 50–100 ms at first and reports each failure
    // twice (its log line, its error callback): said once each here, not once per retry
    let said = stderr.matches("certificate verify failed").count();
    assert!(
        said <= 6,
        "the handshake failure is said {said} times in 3 s: {stderr}"
    );
    rx.assert_quiet(Duration::from_millis(1000)).await;
}

/// `dir/<name>.toml`: Kafka with SASL/SCRAM-SHA-512 as `user` with `password`, with `extra`
/// lines of `[kafka.client]`.
fn sasl_config(
    dir: &std::path::Path,
    name: &str,
    user: &str,
    password: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let toml = format!(
        "[kafka.client]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
         \"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"{user}\"\n\
         \"sasl.password\" = \"{password}\"\n{extra}"
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Kafka with SASL/SCRAM, as Confluent Cloud, MSK and Aiven ask: a tansu broker of the
/// test's own that requires authentication, a user made on it, and the hub with
/// `security.protocol = "SASL_PLAINTEXT"` and SCRAM-SHA-512 credentials in `[kafka.client]`.
/// An event sent to the hub's API is published, consumed by the matcher's group, matched
/// and delivered; a wrong password is refused by the broker and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_sasl_scram_reaches_the_rest_hook() {
    let Some(tansu) = require_external("FHIR_HUB_TANSU") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // the user is made while the broker takes anyone; then it restarts requiring a login
    {
        let _open = OwnBroker::start(&tansu, dir.path(), port, &addr, &[]).await;
        let made = tokio::process::Command::new(&tansu)
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://{addr}"))
            .args([
                "--mechanism",
                "scram512",
                "fhir-hub",
                "correct horse battery",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(made.success(), "tansu user create");
    }
    let _broker = OwnBroker::start(&tansu, dir.path(), port, &addr, &["--authentication"]).await;

    let config = sasl_config(dir.path(), "hub", "fhir-hub", "correct horse battery", "");
    let (_hub, mut rx) = delivers_one_event(&config, &addr, "sasl1").await;

    // the broker refuses a wrong password: publish fails, says why, delivers nothing
    let wrong = sasl_config(
        dir.path(),
        "wrong",
        "fhir-hub",
        "incorrect horse",
        "\"message.timeout.ms\" = \"3000\"\n",
    );
    let stderr = refused_publish(&wrong, &addr, "sasl2").await;
    assert!(stderr.contains("Authentication"), "{stderr}");
    rx.assert_quiet(Duration::from_millis(1000)).await;
}
