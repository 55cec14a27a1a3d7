//! One message's retries on the schedule: each attempt, what to do after a failure, and
//! where the schedule stands (stored, so that a restart resumes it).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::schedule::Schedule;
use super::send::Outcome;

/// How the retries of one message ended.
#[derive(Debug, PartialEq)]
pub enum Final {
    Delivered,
    /// 410 Gone.
    Gone(String),
    /// Every attempt of the schedule failed.
    GaveUp(String),
    Stopped,
    /// A failure could not be recorded: the lease of this incarnation is gone.
    Refused,
}

/// One attempt of one message, and what to do with a failure.
pub trait Attempt {
    fn attempt(&mut self) -> impl Future<Output = Outcome> + Send;
    /// Called after each failed attempt (1-based count of consecutive failures), with the
    /// wait before the next attempt (`None`: the schedule is spent). `false`: stop retrying
    /// (the message is no longer this worker's to send).
    fn failed(
        &mut self,
        failures: usize,
        reason: &str,
        next: Option<Duration>,
    ) -> impl Future<Output = bool> + Send;
}

/// Where a message's retry schedule stands: the index of its next attempt, and the wait
/// before it. Stored with the delivery state, so a restarted worker goes on from here rather
/// than from the start of the schedule (a subscription failing across frequent restarts
/// still reaches the schedule's end and turns `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub attempt: usize,
    pub wait: Duration,
}

impl Pending {
    /// The retry state a stored delivery state holds, if a retry is pending.
    pub fn stored(state: &hub_store::DeliveryState) -> Option<Pending> {
        let ms = state.next_attempt_in_ms?;
        Some(Pending {
            attempt: usize::try_from(state.attempts).ok()?,
            wait: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        })
    }
}

/// Try a message on the schedule: wait `schedule[i]` before attempt `i`; from `from` when a
/// retry of it was pending (a restart), else from the first attempt.
pub async fn deliver_with_retries<A: Attempt + Send>(
    a: &mut A,
    schedule: &Schedule,
    stop: &CancellationToken,
    from: Option<Pending>,
) -> Final {
    let mut attempt = from.map_or(0, |p| p.attempt);
    let mut next = match from {
        Some(p) => Some(p.wait),
        None => schedule.wait(0, None),
    };
    let mut last = String::new();
    loop {
        let Some(wait) = next else {
            return Final::GaveUp(format!("gave up after {attempt} attempts: {last}"));
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return Final::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if stop.is_cancelled() {
            return Final::Stopped;
        }
        match a.attempt().await {
            Outcome::Delivered { .. } => return Final::Delivered,
            Outcome::Failed {
                reason, gone: true, ..
            } => return Final::Gone(reason),
            Outcome::Failed {
                reason,
                retry_after,
                ..
            } => {
                attempt += 1;
                next = schedule.wait(attempt, retry_after);
                if !a.failed(attempt, &reason, next).await {
                    return Final::Refused;
                }
                last = reason;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    struct Flaky {
        fail_first: usize,
        calls: Vec<Duration>,
        start: Instant,
        retry_after: Option<Duration>,
        gone_at: Option<usize>,
    }

    impl Attempt for Flaky {
        async fn attempt(&mut self) -> Outcome {
            self.calls.push(self.start.elapsed());
            let n = self.calls.len();
            if Some(n) == self.gone_at {
                return Outcome::Failed {
                    reason: "gone".into(),
                    retry_after: None,
                    gone: true,
                };
            }
            if n <= self.fail_first {
                Outcome::Failed {
                    reason: format!("fail {n}"),
                    retry_after: self.retry_after,
                    gone: false,
                }
            } else {
                Outcome::Delivered { status: 200 }
            }
        }
        async fn failed(
            &mut self,
            _failures: usize,
            _reason: &str,
            _next: Option<Duration>,
        ) -> bool {
            true
        }
    }

    fn schedule() -> Schedule {
        let items: Vec<String> = ["0s", "5s", "5m", "30m"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Schedule::parse(&items).unwrap()
    }

    fn flaky(fail_first: usize) -> Flaky {
        Flaky {
            fail_first,
            calls: Vec::new(),
            start: Instant::now(),
            retry_after: None,
            gone_at: None,
        }
    }

    fn secs(d: &Duration) -> f64 {
        d.as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_schedule() {
        let mut f = flaky(2);
        let r = deliver_with_retries(&mut f, &schedule(), &CancellationToken::new(), None).await;
        assert_eq!(r, Final::Delivered);
        let t: Vec<f64> = f.calls.iter().map(secs).collect();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], 0.0, "first attempt at once");
        assert!((4.5..=5.5).contains(&t[1]), "second after ~5 s: {t:?}");
        assert!(
            (t[2] - t[1] >= 270.0) && (t[2] - t[1] <= 330.0),
            "third ~5 min later: {t:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_running_out_gives_up() {
        let mut f = flaky(usize::MAX);
        let r = deliver_with_retries(&mut f, &schedule(), &CancellationToken::new(), None).await;
        assert!(
            matches!(r, Final::GaveUp(ref m) if m.contains("4 attempts")),
            "{r:?}"
        );
        assert_eq!(f.calls.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_lengthens_the_wait_and_410_stops() {
        let mut f = flaky(1);
        f.retry_after = Some(Duration::from_secs(120));
        deliver_with_retries(&mut f, &schedule(), &CancellationToken::new(), None).await;
        assert!(secs(&f.calls[1]) >= 120.0, "{:?}", f.calls);

        let mut g = flaky(usize::MAX);
        g.gone_at = Some(2);
        let r = deliver_with_retries(&mut g, &schedule(), &CancellationToken::new(), None).await;
        assert_eq!(r, Final::Gone("gone".into()));
        assert_eq!(g.calls.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_interrupts_a_wait() {
        let stop = CancellationToken::new();
        let mut f = flaky(usize::MAX);
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            s2.cancel();
        });
        let r = deliver_with_retries(&mut f, &schedule(), &stop, None).await;
        assert_eq!(r, Final::Stopped);
        assert_eq!(f.calls.len(), 2);
    }
}
