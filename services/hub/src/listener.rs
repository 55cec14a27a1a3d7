//! The hub's listeners (the HTTP API, and gRPC): connections accepted within limits and
//! served by hyper until they go idle or the hub stops. Both listeners go through [`serve`],
//! so every rule below holds for HTTP/1, HTTP/2, websockets and gRPC alike.
//!
//! - **Bounded.** A connection takes a place under [`ConnectionLimits`] (in total, and per
//!   peer) as it is accepted, before it costs the hub anything more; past a limit it is
//!   refused at once (an HTTP/1 client on the plain API port first reads 503 with an
//!   OperationOutcome) and counted. The place belongs to the socket itself ([`Held`]), so it
//!   is given back when the socket closes, whoever owns the socket by then: hyper, TLS, or a
//!   websocket's task after an upgrade.
//! - **Timed.** A connection must send its first byte, and finish a TLS handshake, within
//!   `server.header_read_timeout_secs` (hyper times HTTP/1 headers after that); one with no
//!   request in flight for `server.idle_timeout_secs` is closed: an idle HTTP/1 keep-alive,
//!   or an HTTP/2 or gRPC connection with no open stream however it answers PINGs. A request
//!   is in flight until its response body is dropped, so open SSE and gRPC streams are never
//!   idle. (A websocket has its own rule: it must bind a subscription in time.)
//! - **Why a share per peer, and no reserve for authenticated callers:** when a connection
//!   is accepted the hub knows only the peer's address; a credential comes after the TLS
//!   handshake and the headers, when the descriptor is spent, so a reserve would go to
//!   whoever connects first. A share per address (per /64 for IPv6, which one host usually
//!   holds whole) keeps one flooding peer from taking the places a health check, a load
//!   balancer or another client needs; the total keeps descriptors for the store and the
//!   log. A flood from more addresses than `total / per_peer` can still fill the total: that
//!   is a firewall's or a proxy's job, and the refusals are counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hub_fhir::{IssueType, OperationOutcome};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::metrics::{ConnectionClosed, ConnectionRefused, Metrics};
use crate::tls::PeerCertificate;

/// Streams one HTTP/2 or gRPC connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP API: HTTP/1 and HTTP/2, websocket upgrades.
    Api,
    /// The gRPC notification stream: HTTP/2 only.
    Grpc,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Grpc => "grpc",
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

/// Requests in flight on one connection (a request lasts until its response body is
/// dropped).
#[derive(Clone)]
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new() -> InFlight {
        InFlight(Arc::new(watch::channel(0).0))
    }

    fn start(&self) -> Busy {
        self.0.send_modify(|n| *n += 1);
        Busy(Arc::clone(&self.0))
    }

    /// Resolves once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            // the sender lives in `self`: neither wait fails
            let _ = rx.wait_for(|n| *n == 0).await;
            tokio::select! {
                _ = tokio::time::sleep(idle) => return,
                _ = rx.changed() => {}
            }
        }
    }
}

/// One request in flight.
struct Busy(Arc<watch::Sender<usize>>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request in flight until hyper drops it.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What every connection of one listener shares.
struct Shared {
    app: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// For the first byte, a TLS handshake, and a closing connection to finish.
    header_timeout: Duration,
    idle: Duration,
    /// How long in-flight requests may finish when the hub stops.
    grace: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// The HTTP/1 answer a refused client on the plain API port reads before the close.
fn refusal_text(reason: Refusal) -> Vec<u8> {
    let why = match reason {
        Refusal::Total => "the hub has no room for another connection; try again shortly",
        Refusal::Peer => {
            "too many open connections from your address; close one or try again shortly"
        }
    };
    let body = OperationOutcome::error(IssueType::Throttled, why)
        .to_json()
        .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/fhir+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `app` on `listener` until `shutdown`, then let open connections finish their
/// requests within `server.shutdown_grace_secs`.
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    app: Router,
    kind: Listener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let alpn: &[&[u8]] = match kind {
        Listener::Api => &[b"h2", b"http/1.1"],
        Listener::Grpc => &[b"h2"],
    };
    let tls =
        crate::tls::server_config(&hub.config.tls, alpn)?.map(tokio_rustls::TlsAcceptor::from);
    match kind {
        Listener::Api => crate::announce(
            &listener,
            "",
            if tls.is_some() { "https://" } else { "http://" },
        )?,
        Listener::Grpc => crate::announce(&listener, "grpc ", "")?,
    }
    let server = &hub.config.server;
    let header_timeout = Duration::from_secs(server.header_read_timeout_secs.max(1));
    let grace = Duration::from_secs(server.shutdown_grace_secs);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if kind == Listener::Grpc {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // a peer that stopped answering is found within 50 s
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // only a plain HTTP/1 peer can read an answer written before it spoke
    let refusals = (kind == Listener::Api && tls.is_none())
        .then(|| (refusal_text(Refusal::Total), refusal_text(Refusal::Peer)));
    let shared = Arc::new(Shared {
        app,
        builder,
        tls,
        header_timeout,
        idle: Duration::from_secs(server.idle_timeout_secs.max(1)),
        grace,
        metrics: Arc::clone(&hub.metrics),
        shutdown: shutdown.clone(),
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // out of file descriptors and the like: wait, never spin
                    tracing::warn!(error = %e, listener = kind.as_str(), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let permit = match hub.connections.admit(kind, addr.ip()) {
            Ok(p) => p,
            Err(reason) => {
                if let Some((total, peer)) = &refusals {
                    let text = if reason == Refusal::Total {
                        total
                    } else {
                        peer
                    };
                    // a fresh socket's send buffer takes it whole; if not, the close says it
                    let _ = stream.try_write(text);
                }
                continue;
            }
        };
        tune(&stream);
        let held = Held {
            io: stream,
            _permit: permit,
        };
        connections.spawn(connection(held, Arc::clone(&shared)));
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = kind.as_str(),
            "connections still open after the grace period; closing them"
        );
    }
    Ok(())
}

/// Socket options of every accepted connection: small frames of a stream go out at once
/// (no Nagle), and TCP keepalive finds a peer that vanished without a FIN (a crashed host, a
/// dropped NAT entry) within about 150 s (60 s of silence, then probes 10 s apart), even on
/// a quiet SSE or websocket stream that writes nothing.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// One accepted connection: its first byte, TLS, then HTTP.
async fn connection(held: Held<TcpStream>, shared: Arc<Shared>) {
    // a connection that sends nothing at all is closed after the header timeout too
    // (hyper's own timer starts with the first byte)
    let mut first = [0u8; 1];
    let sent = matches!(
        tokio::time::timeout(shared.header_timeout, held.io.peek(&mut first)).await,
        Ok(Ok(n)) if n > 0
    );
    if !sent {
        return;
    }
    match &shared.tls {
        None => http(held, None, &shared).await,
        Some(acceptor) => {
            let Ok(Ok(tls)) =
                tokio::time::timeout(shared.header_timeout, acceptor.accept(held)).await
            else {
                return;
            };
            // a verified client certificate travels with every request
            let peer = crate::tls::peer_of(tls.get_ref().1);
            http(tls, peer, &shared).await;
        }
    }
}

/// Serve HTTP on `io` until the peer closes, the connection idles out, or the hub stops.
async fn http<IO>(io: IO, peer: Option<PeerCertificate>, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let in_flight = InFlight::new();
    let (app, tracker) = (shared.app.clone(), in_flight.clone());
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        let busy = tracker.start();
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await?;
            Ok::<_, Infallible>(res.map(|inner| Body::new(Tracked { inner, _busy: busy })))
        }
    });
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = in_flight.idle_for(shared.idle);
    tokio::pin!(idle);
    // once asked to close (GOAWAY for HTTP/2), a connection gets a bounded time to do so
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            // done, or handed to a websocket (which now owns the socket and its place)
            _ = conn.as_mut() => return,
            _ = &mut idle, if closing.is_none() => {
                ConnectionClosed::Idle.emit(&shared.metrics);
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(shared.header_timeout)));
            }
            _ = shared.shutdown.cancelled(), if closing.is_none() => {
                // in-flight requests finish within the grace period
                conn.as_mut().graceful_shutdown();
                closing = Some(Box::pin(tokio::time::sleep(shared.grace)));
            }
            _ = async {
                match closing.as_mut() {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            } => return,
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let f = InFlight::new();
        let busy = f.start();
        let idle = f.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        // a request in flight (an open stream) for far longer is not idleness
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut idle)
                .await
                .is_err()
        );
        drop(busy);
        assert!(
            tokio::time::timeout(Duration::from_secs(4), &mut idle)
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(2), &mut idle)
            .await
            .expect("idle 5 s after the last request ended");
    }
}
