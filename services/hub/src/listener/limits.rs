//! Places for connections: at most `server.max_connections` on the API and gRPC listeners
//! together, at most `server.max_connections_per_peer` of them from one peer. A place is
//! taken as a connection is accepted and owned by its socket ([`Held`]) until it closes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{ConnectionRefused, Metrics};

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP API: HTTP/1 and HTTP/2, websocket upgrades.
    Api,
    /// The gRPC notification stream: HTTP/2 only.
    Grpc,
    /// `/health`, `/ready` and `/metrics` of any role (`admin.listen`), with places of its
    /// own so that a flood of the API cannot keep a probe out.
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Grpc => "grpc",
            Listener::Admin => "admin",
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken.
    Total,
    /// The peer holds its whole share.
    Peer,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::Peer => "peer",
        }
    }
}

/// Whose share a connection counts against: an IPv4 address, or an IPv6 /64 (an IPv4
/// address mapped into IPv6 counts as itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(IpAddr);

impl Peer {
    pub fn of(ip: IpAddr) -> Peer {
        match ip {
            IpAddr::V4(_) => Peer(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Peer(IpAddr::V4(v4)),
                None => Peer(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !(u128::from(u64::MAX)),
                ))),
            },
        }
    }
}

/// The places for connections on every listener of this process.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: usize,
    per_peer: usize,
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_peer: HashMap<Peer, usize>,
}

impl ConnectionLimits {
    /// At most `total` connections, at most `per_peer` of them from one peer.
    pub fn new(total: usize, per_peer: usize, metrics: Arc<Metrics>) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            total: total.max(1),
            per_peer: per_peer.max(1),
            open: Mutex::default(),
            metrics,
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        // nothing panics while holding it; a poisoned count is still the count
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `ip` on `listener`, or why not (counted and logged).
    pub fn admit(self: &Arc<Self>, listener: Listener, ip: IpAddr) -> Result<Permit, Refusal> {
        let peer = Peer::of(ip);
        let admitted = {
            let mut open = self.open();
            let of_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
            if open.total >= self.total {
                Err(Refusal::Total)
            } else if of_peer >= self.per_peer {
                Err(Refusal::Peer)
            } else {
                open.by_peer.insert(peer, of_peer + 1);
                open.total += 1;
                Ok(open.total)
            }
        };
        match admitted {
            Ok(n) => {
                self.metrics.connections_open(n);
                Ok(Permit {
                    limits: Arc::clone(self),
                    peer,
                })
            }
            Err(reason) => {
                ConnectionRefused { listener, reason }.emit(&self.metrics);
                Err(reason)
            }
        }
    }
}

/// One connection's place; given back on drop.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    peer: Peer,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let n = {
            let mut open = self.limits.open();
            open.total = open.total.saturating_sub(1);
            if let Some(c) = open.by_peer.get_mut(&self.peer) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    open.by_peer.remove(&self.peer);
                }
            }
            open.total
        };
        self.limits.metrics.connections_open(n);
    }
}

/// A socket with its place: whoever owns the socket owns the place, up to its close.
#[derive(Debug)]
pub struct Held<IO> {
    io: IO,
    _permit: Permit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Held<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Held<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
impl<IO> Held<IO> {
    pub fn new(io: IO, permit: Permit) -> Held<IO> {
        Held {
            io,
            _permit: permit,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(total, per_peer, Arc::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_gets_its_share_and_the_total_bounds_everyone() {
        let l = limits(5, 2);
        let a1 = l.admit(Listener::Api, ip("10.0.0.1")).unwrap();
        let _a2 = l.admit(Listener::Grpc, ip("10.0.0.1")).unwrap();
        assert_eq!(
            l.admit(Listener::Api, ip("10.0.0.1")).unwrap_err(),
            Refusal::Peer,
            "the share counts both listeners"
        );
        let _b = (
            l.admit(Listener::Api, ip("10.0.0.2")).unwrap(),
            l.admit(Listener::Api, ip("10.0.0.2")).unwrap(),
            l.admit(Listener::Api, ip("10.0.0.3")).unwrap(),
        );
        assert_eq!(
            l.admit(Listener::Api, ip("10.0.0.4")).unwrap_err(),
            Refusal::Total
        );
        drop(a1);
        let _again = l.admit(Listener::Api, ip("10.0.0.1")).unwrap();
        assert_eq!(l.open().total, 5);
    }

    #[test]
    fn places_come_back_and_refusals_leave_nothing_behind() {
        let l = limits(3, 1);
        let p = l.admit(Listener::Api, ip("10.0.0.1")).unwrap();
        assert!(l.admit(Listener::Api, ip("10.0.0.1")).is_err());
        drop(p);
        let open = l.open();
        assert_eq!((open.total, open.by_peer.len()), (0, 0));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_peer_and_mapped_ipv4_is_itself() {
        assert_eq!(
            Peer::of(ip("2001:db8:1:2:aaaa::1")),
            Peer::of(ip("2001:db8:1:2:bbbb:cccc:dddd:eeee"))
        );
        assert_ne!(
            Peer::of(ip("2001:db8:1:2::1")),
            Peer::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Peer::of(ip("::ffff:10.0.0.1")), Peer::of(ip("10.0.0.1")));
        let l = limits(10, 1);
        let _p = l.admit(Listener::Api, ip("2001:db8::1")).unwrap();
        assert_eq!(
            l.admit(Listener::Api, ip("2001:db8::2")).unwrap_err(),
            Refusal::Peer
        );
    }
}
