//! The slow-reader rule of a connection: a response frame handed to hyper that the peer does
//! not take within `streams.write_timeout_secs` (TCP's send buffer full, or an HTTP/2
//! stream's flow-control window closed) ends the connection.
//!
//! A streaming body (SSE, gRPC) hands hyper one frame at a time and is asked for the next
//! only once hyper could pass the previous one on. So "a frame handed over and not asked
//! past since" is exactly "the client stopped reading", whatever the protocol: no timer per
//! write, no guess at buffer sizes. Hyper cannot reset one HTTP/2 stream whose body it is
//! not polling, so the connection is dropped whole — but only when it is stuck as a whole:
//! a frame held past the timeout AND no frame of any of its streams taken for as long. One
//! stream stalled by its own flow-control window costs the hub one frame while the others
//! on the connection go on (an HTTP/2 proxy pooling many clients on one upstream
//! connection must not let one of them reset the rest); that reader falls behind and
//! `streams.max_lag_events` ends it alone. A dropped connection's clients resume from their
//! last event number. The last frame of a finished body is not held against the
//! connection (the idle and keepalive rules cover a response that is only being written out).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Set when a connection is dropped for not reading: its socket is then closed with a reset
/// (`SO_LINGER` 0), not a FIN. A FIN leaves what the client never took (megabytes) queued in
/// the kernel for as long as the client keeps answering zero-window probes; a reset frees it
/// at once. Handed to a websocket through its upgrade request's extensions.
#[derive(Clone, Default)]
pub struct Abort(Arc<AtomicBool>);

impl Abort {
    /// Close this connection's socket with a reset when it is dropped.
    pub fn on_close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An accepted socket that closes with a reset when its [`Abort`] was set.
pub(super) struct Socket {
    io: TcpStream,
    abort: Abort,
}

impl Socket {
    pub(super) fn new(io: TcpStream, abort: Abort) -> Socket {
        Socket { io, abort }
    }

    pub(super) fn stream(&self) -> &TcpStream {
        &self.io
    }

    pub(super) fn abort(&self) -> Abort {
        self.abort.clone()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.abort.0.load(Ordering::Relaxed) {
            let _ = socket2::SockRef::from(&self.io).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
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

/// The frames one connection's response bodies handed over and that were not taken yet.
#[derive(Clone)]
pub(super) struct Stalls {
    /// When the connection started: times are kept as milliseconds since.
    epoch: Instant,
    bodies: Arc<Mutex<Vec<Weak<Held>>>>,
    /// When a frame of any body was last taken (milliseconds since the epoch).
    progress: Arc<AtomicU64>,
}

/// One body's frame held by hyper: milliseconds since the epoch, plus one; 0 when none.
#[derive(Default)]
struct Held(AtomicU64);

impl Stalls {
    pub(super) fn new() -> Stalls {
        Stalls {
            epoch: Instant::now(),
            bodies: Arc::new(Mutex::new(Vec::new())),
            progress: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `inner` watched: a frame it hands over counts until hyper asks for the next one.
    pub(super) fn watch<B>(&self, inner: B) -> Watched<B> {
        let held = Arc::new(Held::default());
        let mut bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&held));
        Watched {
            inner,
            held,
            epoch: self.epoch,
            progress: Arc::clone(&self.progress),
        }
    }

    /// Whether the connection is stuck as a whole: a frame held for `timeout` and no frame
    /// of any body taken for as long.
    pub(super) fn stuck(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.progress.load(Ordering::Relaxed));
        let quiet = self.epoch.elapsed().saturating_sub(last);
        quiet >= timeout && self.oldest().is_some_and(|waited| waited >= timeout)
    }

    /// How long the oldest frame still held has waited (`None`: none is held).
    pub(super) fn oldest(&self) -> Option<Duration> {
        let now = Instant::now();
        let bodies = self.bodies.lock().unwrap_or_else(PoisonError::into_inner);
        bodies
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|h| match h.0.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(self.epoch + Duration::from_millis(ms - 1)),
            })
            .min()
            .map(|since| now.saturating_duration_since(since))
    }
}

/// A response body whose frames are watched for the slow-reader rule.
pub(super) struct Watched<B> {
    inner: B,
    held: Arc<Held>,
    epoch: Instant,
    progress: Arc<AtomicU64>,
}

impl<B> hyper::body::Body for Watched<B>
where
    B: hyper::body::Body<Data = Bytes, Error = axum::Error> + Unpin,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let me = self.get_mut();
        // asked again: the frame before was taken
        if me.held.0.swap(0, Ordering::Relaxed) != 0 {
            let ms = u64::try_from(me.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            me.progress.store(ms, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut me.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && !me.inner.is_end_stream()
        {
            let ms = u64::try_from(me.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            me.held.0.store(ms.saturating_add(1), Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    async fn next_frame(body: &mut Watched<axum::body::Body>) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .and_then(|f| f.ok()?.into_data().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_not_taken_counts_until_the_next_is_asked_for() {
        let stalls = Stalls::new();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(b), rx))
        });
        let mut body = stalls.watch(axum::body::Body::from_stream(stream));
        assert_eq!(stalls.oldest(), None);
        tx.send(Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), "one");
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(stalls.oldest(), Some(Duration::from_secs(7)));
        // asked for the next one: the one before was taken
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), "two");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(stalls.oldest(), Some(Duration::from_secs(1)));
        // nothing is held while the body waits for data of its own
        let waiting = tokio::time::timeout(Duration::from_millis(10), next_frame(&mut body)).await;
        assert!(waiting.is_err(), "no third frame yet");
        assert_eq!(stalls.oldest(), None);
        assert!(!body.is_end_stream());
        drop(body);
        assert_eq!(stalls.oldest(), None);
    }

    /// One stream stalled (its flow-control window closed) while another on the same
    /// connection is read: the connection is not stuck, and is not dropped; once nothing on
    /// it moves for the timeout, it is. (An HTTP/2 proxy pooling many clients on one
    /// upstream connection must not let one of them reset the others.)
    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_beside_one_that_is_read_does_not_make_the_connection_stuck() {
        let timeout = Duration::from_secs(30);
        let stalls = Stalls::new();
        let body = |rx: tokio::sync::mpsc::Receiver<Bytes>| {
            axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
                let b = rx.recv().await?;
                Some((Ok::<_, std::convert::Infallible>(b), rx))
            }))
        };
        let (stalled_tx, stalled_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let (read_tx, read_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let mut stalled = stalls.watch(body(stalled_rx));
        let mut read = stalls.watch(body(read_rx));
        stalled_tx.send(Bytes::from_static(b"held")).await.unwrap();
        assert_eq!(next_frame(&mut stalled).await.unwrap(), "held");
        read_tx.send(Bytes::from_static(b"0")).await.unwrap();
        assert_eq!(next_frame(&mut read).await.unwrap(), "0");
        for i in 1..=12 {
            tokio::time::advance(Duration::from_secs(5)).await;
            read_tx.send(Bytes::from(i.to_string())).await.unwrap();
            assert_eq!(next_frame(&mut read).await.unwrap(), i.to_string());
            assert!(
                !stalls.stuck(timeout),
                "stuck after {} s though a stream is read",
                i * 5
            );
        }
        assert!(
            stalls.oldest().unwrap() >= timeout,
            "the stalled frame is still held"
        );
        // nothing moves any more: stuck once the timeout passed with no frame taken
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!stalls.stuck(timeout));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(stalls.stuck(timeout));
    }
}
