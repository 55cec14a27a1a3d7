//! Mutual TLS: a subscription's client certificate is presented to an HTTPS endpoint that
//! requires one (a Python `ssl` server), and a subscription without it is refused there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Hub, HubEnv, glucose, require_external};

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all short-lived.
pub(crate) fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        let (key, csr, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("/CN=hub-{name}"),
        );
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let (pem, ext) = (format!("{name}.pem"), format!("{name}.ext"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test]
async fn client_certificates_are_presented_per_subscription() {
    let Some(python) = require_external("FHIR_HUB_PYTHON") else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tls_receiver.py");
    let mut server = Command::new(&python)
        .arg(script)
        .arg(pki.path().join("server.pem"))
        .arg(pki.path().join("server.key"))
        .arg(pki.path().join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("port ")
        .unwrap()
        .parse()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });

    let ca = pki.path().join("ca.pem");
    let hub = Hub::start(HubEnv::default().var(
        "HUB_DELIVERY__CA_CERTIFICATES",
        &format!("[\"{}\"]", ca.display()),
    ))
    .await;
    let endpoint = format!("https://127.0.0.1:{port}/hook");
    let identity = std::fs::read_to_string(pki.path().join("client.pem")).unwrap()
        + &std::fs::read_to_string(pki.path().join("client.key")).unwrap();
    let subscription = |with_cert: bool| {
        let mut channel =
            json!({"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"});
        if with_cert {
            channel["extension"] =
                json!([{"url": "urn:fhir-hub:client-certificate", "valueString": identity}]);
        }
        json!({"resourceType": "Subscription", "status": "requested", "reason": "mtls",
               "criteria": "Observation?code=2345-7", "channel": channel})
    };
    let (s, with) = hub
        .post_json("/fhir/Subscription", &subscription(true))
        .await;
    assert_eq!(s, 201, "{with}");
    assert!(
        with["channel"].get("extension").is_none() || !with.to_string().contains("PRIVATE KEY"),
        "the key is never shown"
    );
    let (s, without) = hub
        .post_json("/fhir/Subscription", &subscription(false))
        .await;
    assert_eq!(s, 201, "{without}");

    hub.wait_status(with["id"].as_str().unwrap(), "active")
        .await;
    let refused = hub
        .wait_status(without["id"].as_str().unwrap(), "error")
        .await;
    assert!(refused["error"].as_str().is_some(), "{refused}");

    hub.post_json("/events", &glucose("tls1")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no delivery over mTLS")
            .unwrap();
        if got["method"] == "PUT" {
            assert_eq!(got["path"], "/hook/Observation/tls1");
            assert_eq!(got["client"], "hub-client");
            break;
        }
    }
    // A bad certificate is refused at create.
    let mut bad = subscription(true);
    bad["channel"]["extension"][0]["valueString"] = json!(
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    );
    let (s, oo) = hub.post_json("/fhir/Subscription", &bad).await;
    assert_eq!(s, 422, "{oo}");
    let _ = server.kill();
    let _ = server.wait();
}
