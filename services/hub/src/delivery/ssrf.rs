//! Egress policy for rest-hook endpoints: no requests to any IANA special-purpose address
//! (loopback, private, link-local, multicast, unspecified, cloud metadata, translation
//! prefixes...: the table in [`super::special`]) unless an operator allows a network.
//!
//! URLs are parsed the WHATWG way, so numeric host forms (`http://2130706433/`,
//! `http://0x7f.1/`, `http://0177.0.0.1/`) become the addresses they mean before they are
//! checked. Names are resolved once; every address must pass, and the request then connects
//! to a checked address (the client pins it), so DNS cannot be changed in between.

use std::net::{IpAddr, SocketAddr};

use url::{Host, Url};

/// A network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse().map_err(|_| format!("'{s}': bad prefix"))?
        };
        if prefix > max {
            return Err(format!("'{s}': prefix longer than {max}"));
        }
        Ok(Network { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// What the operator allows.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Networks allowed even though they are private (development, tests, on-premise).
    pub allowed: Vec<Network>,
    pub https_only: bool,
    /// Ports public endpoints may use (empty: any). Addresses in `allowed` may use any port.
    pub ports: Vec<u16>,
}

/// Why an address may not be contacted, if it may not: the special-purpose table
/// ([`super::special`]), IPv4 addresses embedded in IPv6 ones checked against its IPv4 part.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    super::special::forbidden(ip)
}

/// A checked endpoint: where to connect.
#[derive(Debug, Clone)]
pub struct CheckedEndpoint {
    pub url: Url,
    /// Set for names: the checked address the request must connect to.
    pub pinned: Option<(String, SocketAddr)>,
}

impl EgressPolicy {
    fn check_ip(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        let allowed = self.allowed.iter().any(|n| n.contains(ip));
        if !allowed && !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(format!(
                "port {port} is not one endpoints may use ({}; delivery.allowed_ports)",
                self.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match forbidden_reason(ip) {
            Some(why) if !allowed => Err(format!(
                "{ip} is a {why} address; endpoints must be public (operators can allow networks in delivery.allowed_networks)"
            )),
            _ => Ok(()),
        }
    }

    /// Parse, resolve and check an endpoint URL.
    pub async fn check(&self, endpoint: &str) -> Result<CheckedEndpoint, String> {
        let url = Url::parse(endpoint).map_err(|e| format!("'{endpoint}' is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => return Err("this hub delivers over https only (delivery.https_only)".into()),
            s => return Err(format!("scheme '{s}' is not http or https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials in the endpoint URL are not allowed; use channel.header".into(),
            );
        }
        let port = url.port_or_known_default().unwrap_or(443);
        match url.host() {
            Some(Host::Ipv4(ip)) => self
                .check_ip(IpAddr::V4(ip), port)
                .map(|()| CheckedEndpoint {
                    url: url.clone(),
                    pinned: None,
                }),
            Some(Host::Ipv6(ip)) => self
                .check_ip(IpAddr::V6(ip), port)
                .map(|()| CheckedEndpoint {
                    url: url.clone(),
                    pinned: None,
                }),
            Some(Host::Domain(name)) => {
                let name = name.to_owned();
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map_err(|e| format!("'{name}' does not resolve: {e}"))?
                    .collect();
                let first = *addrs
                    .first()
                    .ok_or_else(|| format!("'{name}' has no addresses"))?;
                for a in &addrs {
                    self.check_ip(a.ip(), port)
                        .map_err(|e| format!("'{name}' resolves to {e}"))?;
                }
                Ok(CheckedEndpoint {
                    url,
                    pinned: Some((name, first)),
                })
            }
            None => Err(format!("'{endpoint}' has no host")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EgressPolicy {
        EgressPolicy::default()
    }

    #[tokio::test]
    async fn refuses_internal_addresses_in_every_spelling() {
        for url in [
            "http://127.0.0.1/h",
            "http://127.1.2.3:8080/h",
            "http://[::1]/h",
            "http://10.1.2.3/h",
            "http://172.16.0.1/h",
            "http://172.31.255.255/h",
            "http://192.168.1.1/h",
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00::1]/h",
            "http://[fd00:ec2::254]/h",
            "http://[fe80::1]/h",
            "http://[::ffff:127.0.0.1]/h",
            "http://[::ffff:10.0.0.1]/h",
            "http://[64:ff9b::a9fe:a9fe]/h",
            "http://0.0.0.0/h",
            "http://[::]/h",
            "http://224.0.0.1/h",
            "http://2130706433/h",
            "http://0x7f000001/h",
            "http://0x7f.1/h",
            "http://0177.0.0.1/h",
            "http://017700000001/h",
            "http://127.1/h",
            "http://localhost/h",
            "http://100.64.0.1/h",
            // 6to4 of 127.0.0.1 and 10.0.0.1, Teredo, NAT64 local-use, benchmarking,
            // IETF protocol assignments, documentation
            "http://[2002:7f00:1::]/h",
            "http://[2002:a00:1::1]/h",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/h",
            "http://[64:ff9b:1::a00:1]/h",
            "http://198.18.0.1/h",
            "http://198.19.255.1/h",
            "http://[2001:2::1]/h",
            "http://192.0.0.8/h",
            "http://[2001:10::1]/h",
            "http://192.0.2.1/h",
            "http://[2001:db8::1]/h",
            // IPv4-translated (SIIT) 127.0.0.1 and 10.0.0.1, SRv6, the 2024 documentation
            // block, ORCHIDv2
            "http://[::ffff:0:7f00:1]/h",
            "http://[::ffff:0:a00:1]/h",
            "http://[5f00::1]/h",
            "http://[3fff::1]/h",
            "http://[2001:20::1]/h",
        ] {
            let r = policy().check(url).await;
            assert!(r.is_err(), "{url} must be refused");
        }
    }

    #[tokio::test]
    async fn allows_public_addresses_and_allowed_networks() {
        assert!(policy().check("http://93.184.216.34/hook").await.is_ok());
        assert!(
            policy()
                .check("https://[2606:4700::1111]/hook")
                .await
                .is_ok()
        );
        let dev = EgressPolicy {
            ports: Vec::new(),
            allowed: vec![Network::parse("127.0.0.0/8").unwrap()],
            https_only: false,
        };
        assert!(dev.check("http://127.0.0.1:9000/hook").await.is_ok());
        assert!(dev.check("http://10.0.0.1/hook").await.is_err());
        let strict = EgressPolicy {
            ports: Vec::new(),
            https_only: true,
            ..Default::default()
        };
        assert!(strict.check("http://93.184.216.34/hook").await.is_err());
        // ports: public endpoints only on listed ones; allowed networks on any
        let ported = EgressPolicy {
            ports: vec![443, 8443],
            allowed: vec![Network::parse("127.0.0.0/8").unwrap()],
            https_only: false,
        };
        assert!(ported.check("https://93.184.216.34/hook").await.is_ok());
        assert!(
            ported
                .check("https://93.184.216.34:8443/hook")
                .await
                .is_ok()
        );
        let e = ported
            .check("http://93.184.216.34:22/hook")
            .await
            .unwrap_err();
        assert!(e.contains("port 22"), "{e}");
        assert!(ported.check("http://127.0.0.1:9000/hook").await.is_ok());
        assert!(
            policy()
                .check("http://user:pw@93.184.216.34/hook")
                .await
                .is_err()
        );
        assert!(policy().check("ftp://93.184.216.34/").await.is_err());
    }

    #[test]
    fn networks() {
        let n = Network::parse("172.16.0.0/12").unwrap();
        assert!(n.contains("172.31.1.1".parse().unwrap()));
        assert!(!n.contains("172.32.0.1".parse().unwrap()));
        assert!(
            Network::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
    }
}
