//! TLS for the HTTP and gRPC listeners (rustls, ring). With `tls.client_ca_file`, clients
//! may present a certificate signed by those CAs; a verified certificate whose SHA-256
//! fingerprint is listed in `auth.client_certificates` acts as that API key (mutual TLS as a
//! credential, for systems that cannot hold a bearer token).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// The verified client certificate of a connection, as its fingerprint (lower-case hex
/// SHA-256 of the DER), put into each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub String);

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The rustls server configuration, `None` when TLS is off. `alpn` lists the protocols to
/// offer (`h2`, `http/1.1`).
pub fn server_config(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if tls.cert_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let chain = certs(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("reading the private key {}", tls.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if tls.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&tls.client_ca_file)? {
            roots.add(c).context("tls.client_ca_file")?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // a client without a certificate authenticates another way (bearer token)
                .allow_unauthenticated()
                .build()
                .context("tls.client_ca_file")?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("tls.cert_file and tls.key_file do not make a certificate")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// The fingerprint of the client certificate a finished handshake verified.
pub fn peer_of(conn: &rustls::ServerConnection) -> Option<PeerCertificate> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| PeerCertificate(fingerprint(c)))
}
