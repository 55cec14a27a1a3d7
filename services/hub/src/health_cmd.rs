//! `fhir-hub health`: probe this host's hub (`/health` or `/ready` on the admin listener when
//! `admin.listen` is set, on the API listener otherwise) and
//! exit 0 when it answers 200, 1 otherwise: the container's HEALTHCHECK, where the binary is
//! the only tool in the image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::Config;

/// Where a probe on this host reaches the hub: `admin.listen` when set (every role has it),
/// else `server.listen`, with an unspecified address (`0.0.0.0`, `[::]`) replaced by
/// loopback of the same family.
pub fn probe_addr(config: &Config) -> anyhow::Result<SocketAddr> {
    let mut addr = match config.admin.listen.as_str() {
        "" => config.listen_addr()?,
        admin => std::net::ToSocketAddrs::to_socket_addrs(admin)
            .map_err(|e| anyhow::anyhow!("admin.listen {admin}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("admin.listen {admin} names no address"))?,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if addr.port() == 0 {
        anyhow::bail!("the listener probed ({addr}) has port 0: give --url");
    }
    Ok(addr)
}

/// The URL probed: `url` when given, else `/health` (or `/ready`) at [`probe_addr`].
pub fn probe_url(config: &Config, url: Option<&str>, ready: bool) -> anyhow::Result<String> {
    if let Some(u) = url {
        return Ok(u.to_owned());
    }
    let path = if ready { "/ready" } else { "/health" };
    // the admin listener is plain HTTP
    let scheme = if config.admin.listen.is_empty() {
        config.scheme()
    } else {
        "http"
    };
    Ok(format!("{scheme}://{}{path}", probe_addr(config)?))
}

/// GET `url`; `Ok(status line)` on 200, `Err` with what was wrong otherwise. The hub's own
/// certificate names its public host, not loopback: it is not verified here (the probe
/// sends no credential and reads only a status).
pub async fn probe(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {}", causes(&e)))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let summary: String = body.chars().take(400).collect();
    if status == reqwest::StatusCode::OK {
        Ok(format!("{url}: {status}"))
    } else {
        anyhow::bail!("{url}: {status} {summary}")
    }
}

/// An error with its causes, `: `-separated ("error sending request" alone does not say
/// whether the port was closed).
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        out.push_str(": ");
        out.push_str(&c.to_string());
        next = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let mut c = Config::defaults().unwrap();
        c.server.listen = "0.0.0.0:8080".into();
        assert_eq!(
            probe_url(&c, None, false).unwrap(),
            "http://127.0.0.1:8080/health"
        );
        c.server.listen = "[::]:9000".into();
        assert_eq!(
            probe_url(&c, None, true).unwrap(),
            "http://[::1]:9000/ready"
        );
        c.server.listen = "10.1.2.3:8080".into();
        assert_eq!(
            probe_url(&c, None, false).unwrap(),
            "http://10.1.2.3:8080/health"
        );
        assert_eq!(
            probe_url(&c, Some("http://x/y"), false).unwrap(),
            "http://x/y"
        );
        c.server.listen = "127.0.0.1:0".into();
        assert!(probe_url(&c, None, false).is_err());
        // an admin listener, where there is one, whatever the roles
        c.admin.listen = "0.0.0.0:9464".into();
        assert_eq!(
            probe_url(&c, None, true).unwrap(),
            "http://127.0.0.1:9464/ready"
        );
    }
}
