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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hub_fhir::{IssueType, OperationOutcome};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{ConnectionClosed, Metrics};
use crate::state::Hub;
use crate::tls::PeerCertificate;

mod limits;
mod stalls;
pub use limits::{ConnectionLimits, Held, Listener, Peer, Permit, Refusal};
pub use stalls::Abort;
use stalls::{Socket, Stalls};

/// Streams one HTTP/2 or gRPC connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Connections the admin listener holds at once, and per peer address: probes and scrapers
/// each come from few addresses (a kubelet from its node), so a small share per address and
/// a short idle time keep a handful of peers from filling it.
const ADMIN_MAX_CONNECTIONS: usize = 256;
const ADMIN_MAX_CONNECTIONS_PER_PEER: usize = 4;
const ADMIN_IDLE: Duration = Duration::from_secs(5);

/// Every request on every listener: a request id (the client's `x-request-id` when it is a
/// short token, a new UUID otherwise) on the request, on the answer and on every log line
/// written while it is served (the `request` span); an access log line at INFO (DEBUG for
/// probes and scrapes) with method, path without its query (which may carry a binding
/// token), route, status and time to the answer head — never a header, query or body, so no
/// PHI or credential; and the request's time in the metrics: HTTP by method, route template
/// and status class, gRPC by method and status code (from the headers, or the trailers of
/// a stream), observed when the response body ends or is dropped.
async fn timed(
    axum::extract::State((metrics, kind)): axum::extract::State<(Arc<Metrics>, Listener)>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let id = request_id(req.headers());
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    // a path no route matched may be anything a client sends (a FHIR client mistaking the
    // hub for its server writes patient ids into it): only routed paths are logged
    let shown_path = if route.is_some() {
        crate::telemetry::redacted_uri(req.uri())
    } else {
        "-".to_owned()
    };
    let span = tracing::info_span!("request", id = %id, method = %method, path = %shown_path,
                                   listener = %kind.as_str());
    let mut res = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let grpc_status = res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = res.status().as_u16();
    let probe = matches!(route.as_deref(), Some("/health" | "/ready" | "/metrics"));
    span.in_scope(|| {
        let route = route.as_deref().unwrap_or("-");
        let grpc = grpc_status.as_deref().unwrap_or("-");
        if probe {
            tracing::debug!(target: "fhir_hub::access", status, route = %route, took_ms, "answered");
        } else {
            tracing::info!(target: "fhir_hub::access", status, route = %route, grpc = %grpc, took_ms, "answered");
        }
    });
    let mut timer = match kind {
        Listener::Grpc => metrics.grpc_request(Some(&path), started),
        Listener::Api | Listener::Admin => {
            metrics.http_request(&method, route.as_deref(), status, started)
        }
    };
    if kind == Listener::Grpc
        && let Some(code) = &grpc_status
    {
        // a trailers-only answer (an error before the stream started)
        timer.grpc_status(code);
    }
    res.map(|inner| {
        Body::new(Guarded {
            inner,
            guard: timer,
        })
    })
}

const REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The client's request id when it is a short token of letters, digits, `-`, `_` and `.`
/// (nothing a log line could be forged with), a new UUID otherwise.
fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
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

/// What a response body carries until hyper drops it: a request in flight ([`Busy`]), a
/// request being timed ([`crate::metrics::RequestTimer`], which reads a gRPC status from the
/// trailers).
trait Guard: Send + Unpin + 'static {
    /// A frame went out.
    fn sent(&mut self, _frame: &Frame<Bytes>) {}
}

impl Guard for Busy {}

impl Guard for crate::metrics::RequestTimer {
    fn sent(&mut self, frame: &Frame<Bytes>) {
        if let Some(code) = frame
            .trailers_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
        {
            self.grpc_status(code);
        }
    }
}

/// A response body with its [`Guard`], dropped with it.
struct Guarded<B, G> {
    inner: B,
    guard: G,
}

impl<B, G> hyper::body::Body for Guarded<B, G>
where
    B: hyper::body::Body<Data = Bytes, Error = axum::Error> + Unpin,
    G: Guard,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            this.guard.sent(frame);
        }
        polled
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
    /// How long a response frame may wait for the peer to take it (`streams.write_timeout_secs`).
    write_timeout: Duration,
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
        Listener::Api | Listener::Admin => &[b"h2", b"http/1.1"],
        Listener::Grpc => &[b"h2"],
    };
    // the admin listener serves probes and scrapers inside the deployment: plain HTTP
    let tls = match kind {
        Listener::Admin => None,
        _ => crate::tls::server_config(&hub.config.tls, alpn)?.map(tokio_rustls::TlsAcceptor::from),
    };
    match kind {
        Listener::Api => crate::roles::announce(
            &listener,
            "",
            if tls.is_some() { "https://" } else { "http://" },
        )?,
        Listener::Grpc => crate::roles::announce(&listener, "grpc ", "")?,
        Listener::Admin => crate::roles::announce(&listener, "admin ", "http://")?,
    }
    // a probe keeps its places whatever the API's clients do
    let limits = match kind {
        Listener::Admin => ConnectionLimits::new(
            ADMIN_MAX_CONNECTIONS,
            ADMIN_MAX_CONNECTIONS_PER_PEER,
            Arc::clone(&hub.metrics),
        ),
        _ => Arc::clone(&hub.connections),
    };
    let app = app.layer(axum::middleware::from_fn_with_state(
        (Arc::clone(&hub.metrics), kind),
        timed,
    ));
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
    let refusals = (kind != Listener::Grpc && tls.is_none())
        .then(|| (refusal_text(Refusal::Total), refusal_text(Refusal::Peer)));
    let shared = Arc::new(Shared {
        app,
        builder,
        tls,
        header_timeout,
        idle: match kind {
            Listener::Admin => ADMIN_IDLE,
            _ => Duration::from_secs(server.idle_timeout_secs.max(1)),
        },
        grace,
        write_timeout: Duration::from_secs(hub.config.streams.write_timeout_secs.max(1)),
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
        let permit = match limits.admit(kind, addr.ip()) {
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
        let held = Held::new(Socket::new(stream, Abort::default()), permit);
        let peer_addr = crate::auth::PeerAddr(addr.ip());
        connections.spawn(connection(held, peer_addr, Arc::clone(&shared)));
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
async fn connection(held: Held<Socket>, addr: crate::auth::PeerAddr, shared: Arc<Shared>) {
    // a connection that sends nothing at all is closed after the header timeout too
    // (hyper's own timer starts with the first byte)
    let mut first = [0u8; 1];
    let sent = matches!(
        tokio::time::timeout(shared.header_timeout, held.get_ref().stream().peek(&mut first)).await,
        Ok(Ok(n)) if n > 0
    );
    if !sent {
        return;
    }
    let abort = held.get_ref().abort();
    match &shared.tls {
        None => http(held, addr, None, abort, &shared).await,
        Some(acceptor) => {
            let Ok(Ok(tls)) =
                tokio::time::timeout(shared.header_timeout, acceptor.accept(held)).await
            else {
                return;
            };
            // a verified client certificate travels with every request
            let peer = crate::tls::peer_of(tls.get_ref().1);
            http(tls, addr, peer, abort, &shared).await;
        }
    }
}

/// Serve HTTP on `io` until the peer closes, the connection idles out, or the hub stops.
async fn http<IO>(
    io: IO,
    addr: crate::auth::PeerAddr,
    peer: Option<PeerCertificate>,
    abort: Abort,
    shared: &Shared,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let in_flight = InFlight::new();
    let stalls = Stalls::new();
    let (app, tracker, watch) = (shared.app.clone(), in_flight.clone(), stalls.clone());
    let socket_abort = abort.clone();
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        let busy = tracker.start();
        // the peer's address: refusals are counted and throttled per address (auth)
        req.extensions_mut().insert(addr);
        // a websocket that takes the socket over may find its client stopped reading
        req.extensions_mut().insert(socket_abort.clone());
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        let (app, watch) = (app.clone(), watch.clone());
        async move {
            let res = app.oneshot(req).await?;
            Ok::<_, Infallible>(res.map(|inner| {
                let inner = watch.watch(inner);
                Body::new(Guarded { inner, guard: busy })
            }))
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
    // the slow-reader rule, looked at twice per write timeout
    let mut look = tokio::time::interval(shared.write_timeout / 2);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // done, or handed to a websocket (which now owns the socket and its place)
            _ = conn.as_mut() => return,
            _ = look.tick() => {
                if stalls.stuck(shared.write_timeout) {
                    // stuck as a whole (`stalls`): hyper cannot reset one HTTP/2 stream whose
                    // body it no longer polls, so the connection goes, and its clients resume
                    // from their last number
                    ConnectionClosed::SlowReader.emit(&shared.metrics);
                    abort.on_close();
                    return;
                }
            }
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
