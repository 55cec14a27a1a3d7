//! The flood's clients: anonymous connections on one listener that hold their places the
//! way an attacker would (HTTP/1 keep-alive requests, HTTP/2 connections that answer every
//! PING, websockets that bind nothing), reconnecting when refused or closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{FLOOD_FROM, Kind};

/// Anonymous clients holding connections: each reconnects when the hub closes or refuses
/// it until `stop`; after `stop` each keeps what it holds until the hub closes it.
pub(super) struct Flood {
    pub(super) stop: Arc<AtomicBool>,
    /// Connections that had a first answer (admitted or refused).
    pub(super) settled: Arc<AtomicUsize>,
    pub(super) refused: Arc<AtomicUsize>,
    /// Refused clients that read the hub's 503 OperationOutcome.
    pub(super) told_503: Arc<AtomicUsize>,
    pub(super) most_held: Arc<AtomicUsize>,
    /// Close frames websockets received.
    pub(super) closes: Arc<Mutex<Vec<(u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum Outcome {
    Refused,
    /// Admitted, then closed by the hub.
    Closed,
}

#[derive(Clone)]
struct Counters {
    stop: Arc<AtomicBool>,
    told_503: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    most_held: Arc<AtomicUsize>,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
}

impl Counters {
    fn admitted(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_held.fetch_max(now, Ordering::SeqCst);
    }

    fn released(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Flood {
    pub(super) fn start(kind: Kind, target: SocketAddr, n: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let settled = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let c = Counters {
            stop: Arc::clone(&stop),
            told_503: Arc::default(),
            held: Arc::default(),
            most_held: Arc::default(),
            closes: Arc::default(),
        };
        let tasks = (0..n)
            .map(|i| {
                let (c, settled, refused) = (c.clone(), settled.clone(), refused.clone());
                let source = FLOOD_FROM[i % FLOOD_FROM.len()];
                tokio::spawn(async move {
                    let mut first = true;
                    loop {
                        let Ok(stream) = connect_from(source, target).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let outcome = session(kind, stream, target, &c, &mut first, &settled).await;
                        if matches!(outcome, Outcome::Refused) {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        if c.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        Flood {
            stop,
            settled,
            refused,
            told_503: c.told_503,
            most_held: c.most_held,
            closes: c.closes,
            tasks,
        }
    }

    /// Wait until every client had a first answer (or `limit` passed: a hub that queues
    /// connections answers some never).
    pub(super) async fn settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.settled.load(Ordering::SeqCst) < self.tasks.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn connect_from(source: &str, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket.connect(target).await
}

/// One connection's life; `first` marks the client's first answer for `settled`.
async fn session(
    kind: Kind,
    stream: TcpStream,
    target: SocketAddr,
    c: &Counters,
    first: &mut bool,
    settled: &AtomicUsize,
) -> Outcome {
    let settle = |first: &mut bool| {
        if std::mem::take(first) {
            settled.fetch_add(1, Ordering::SeqCst);
        }
    };
    match kind {
        Kind::Http1 => http1(stream, c, || settle(first)).await,
        Kind::Http2 | Kind::Grpc => http2(stream, c, || settle(first)).await,
        Kind::Websocket => websocket(stream, target, c, || settle(first)).await,
    }
}

/// Keep-alive requests for a page that does not exist, until `stop`; then silence.
async fn http1(mut s: TcpStream, c: &Counters, mut settle: impl FnMut()) -> Outcome {
    // a refusal comes at once, before the client says anything
    let mut buf = Vec::new();
    if let Ok(got) =
        tokio::time::timeout(Duration::from_millis(200), read_response(&mut s, &mut buf)).await
    {
        settle();
        if got.is_some_and(|(status, body)| status == 503 && body.contains("OperationOutcome")) {
            c.told_503.fetch_add(1, Ordering::SeqCst);
        }
        return Outcome::Refused;
    }
    let mut admitted = false;
    loop {
        let sent = s
            .write_all(b"GET /flood HTTP/1.1\r\nHost: hub\r\n\r\n")
            .await
            .is_ok();
        let answer = if sent {
            read_response(&mut s, &mut buf).await
        } else {
            None
        };
        match answer {
            Some((status, body)) if !admitted => {
                settle();
                if status == 503 {
                    if body.contains("OperationOutcome") {
                        c.told_503.fetch_add(1, Ordering::SeqCst);
                    }
                    return Outcome::Refused;
                }
                admitted = true;
                c.admitted();
            }
            Some(_) => {}
            None if admitted => {
                c.released();
                return Outcome::Closed;
            }
            None => {
                settle();
                return Outcome::Refused;
            }
        }
        if c.stop.load(Ordering::SeqCst) {
            // hold the connection, silent, until the hub closes it
            let mut b = [0u8; 512];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
            c.released();
            return Outcome::Closed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1 response (status and body), or `None` when the connection closed first.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, String)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some((status, body));
        }
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// An HTTP/2 connection (prior knowledge) that opens no stream but answers every PING and
/// SETTINGS, as a client holding connections would; held until the hub closes it.
async fn http2(mut s: TcpStream, c: &Counters, mut settle: impl FnMut()) -> Outcome {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&frame(4, 0, &[]));
    if s.write_all(&hello).await.is_err() {
        settle();
        return Outcome::Refused;
    }
    let mut admitted = false;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            if admitted {
                c.released();
                return Outcome::Closed;
            }
            settle();
            return Outcome::Refused;
        }
        if !admitted && head.starts_with(b"HTTP/1.1 ") {
            // the API port's refusal, in HTTP/1
            settle();
            let mut text = head.to_vec();
            let _ = s.read_to_end(&mut text).await;
            let text = String::from_utf8_lossy(&text);
            if text.starts_with("HTTP/1.1 503") && text.contains("OperationOutcome") {
                c.told_503.fetch_add(1, Ordering::SeqCst);
            }
            return Outcome::Refused;
        }
        if !admitted {
            settle();
            admitted = true;
            c.admitted();
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (ty, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            c.released();
            return Outcome::Closed;
        }
        let reply = match (ty, flags & 1) {
            (4, 0) => Some(frame(4, 1, &[])),
            (6, 0) => Some(frame(6, 1, &payload)),
            _ => None,
        };
        if let Some(r) = reply
            && s.write_all(&r).await.is_err()
        {
            c.released();
            return Outcome::Closed;
        }
    }
}

fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        ty,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// A websocket that binds nothing, held until the hub closes it.
async fn websocket(
    s: TcpStream,
    target: SocketAddr,
    c: &Counters,
    mut settle: impl FnMut(),
) -> Outcome {
    use tokio_tungstenite::tungstenite::{Error, Message};
    let url = format!("ws://{target}/fhir/$subscription-ws");
    let mut ws = match tokio_tungstenite::client_async(url, s).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            settle();
            if let Error::Http(res) = &e
                && res.status().as_u16() == 503
                && res
                    .body()
                    .as_ref()
                    .is_some_and(|b| String::from_utf8_lossy(b).contains("OperationOutcome"))
            {
                c.told_503.fetch_add(1, Ordering::SeqCst);
            }
            return Outcome::Refused;
        }
    };
    settle();
    c.admitted();
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(frame)) => {
                let (code, why) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                c.closes.lock().unwrap().push((code, why));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    c.released();
    Outcome::Closed
}
