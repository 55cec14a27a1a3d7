//! One helper for "keep trying until it works or we are told to stop": the matcher holds a
//! batch this way while the store or the log is unavailable (nothing is acknowledged until
//! it succeeds, so nothing is lost, only delayed).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first wait; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(10);
/// After this many failures in a row the message is logged at ERROR: someone should look.
const ESCALATE_AFTER: u32 = 5;

/// Run `op` until it succeeds, waiting 200 ms, 400 ms, … up to 10 s between attempts.
/// `None` when it failed and `shutdown` was cancelled before it could succeed (the caller
/// stops without acknowledging).
pub async fn until_ok<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &'static str,
    op: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_done(shutdown, what, op, |_| false)
        .await
        .and_then(Result::ok)
}

/// [`until_ok`], but an error for which `is_final` holds (retrying cannot fix it: the
/// database refused the data) ends the retrying and is returned, for the caller to set
/// the data aside.
pub async fn until_done<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &'static str,
    mut op: F,
    is_final: impl Fn(&E) -> bool,
) -> Option<Result<T, E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = FIRST_WAIT;
    let mut failures = 0u32;
    loop {
        // always one attempt, even when shutting down: finishing in-flight work (recording a
        // delivery that went out) is what a graceful stop is for
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(failures, "{what}: succeeded after retrying");
                }
                return Some(Ok(v));
            }
            Err(e) if is_final(&e) => return Some(Err(e)),
            Err(e) => {
                failures += 1;
                if failures >= ESCALATE_AFTER {
                    tracing::error!(error = %e, failures, "{what}: still failing; retrying");
                } else {
                    tracing::warn!(error = %e, failures, "{what}: failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_ok() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let v = until_ok(&stop, "test", || {
            calls += 1;
            let n = calls;
            async move { if n < 4 { Err("down") } else { Ok(n) } }
        })
        .await;
        assert_eq!(v, Some(4));
        // 200 + 400 + 800 ms of waiting
        assert_eq!(started.elapsed(), Duration::from_millis(1400));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown() {
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            s2.cancel();
        });
        let v: Option<()> = until_ok(&stop, "test", || async { Err::<(), _>("down") }).await;
        assert_eq!(v, None);
        // stopped already: one attempt still runs
        assert_eq!(
            until_ok(&stop, "test", || async { Ok::<_, &str>(7) }).await,
            Some(7)
        );
    }
}
