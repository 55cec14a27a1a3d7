//! Waiting for the roles of a process: until they end, or, once shutdown is asked for, until
//! one grace deadline for the whole process.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Wait for every role in `tasks`. A role that fails cancels `shutdown` (so a supervisor
/// restarts the process after the others have drained); its error is returned. Once
/// `shutdown` is cancelled the roles get `grace` to stop, after which the rest are aborted.
pub(crate) async fn join_roles(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut result = Ok(());
    // Set when shutdown is first seen: every role shares it, so roles that stall one after
    // another cannot each take a whole grace.
    let mut deadline = None;
    loop {
        let next = if shutdown.is_cancelled() {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
            match tokio::time::timeout_at(until, tasks.join_next()).await {
                Ok(n) => n,
                Err(_) => {
                    tracing::error!("roles did not stop within the grace period; aborting them");
                    tasks.abort_all();
                    break;
                }
            }
        } else {
            tasks.join_next().await
        };
        let Some(joined) = next else {
            if deadline.is_some() {
                tracing::info!("drained: every role finished its in-flight work");
            }
            break;
        };
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            tracing::error!(error = format!("{e:#}"), "a role failed; shutting down");
            if result.is_ok() {
                result = Err(e);
            }
            shutdown.cancel();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Two roles that drain slowly: one stops just before the grace ends, one never does.
    /// The process stops at the grace deadline, not a grace after the first one stopped.
    #[tokio::test(start_paused = true)]
    async fn the_grace_is_one_deadline_for_the_whole_process() {
        let grace = Duration::from_secs(30);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for stops_after in [Some(Duration::from_secs(29)), None] {
            let s = shutdown.clone();
            tasks.spawn(async move {
                s.cancelled().await;
                match stops_after {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
                Ok(())
            });
        }
        let asked = Instant::now();
        shutdown.cancel();
        join_roles(&mut tasks, &shutdown, grace).await.unwrap();
        assert_eq!(
            asked.elapsed(),
            grace,
            "stopped after {:?}",
            asked.elapsed()
        );
        let stalled = tasks.join_next().await.unwrap().unwrap_err();
        assert!(stalled.is_cancelled(), "the stalled role was aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_role_stops_the_others_and_is_reported() {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let s = shutdown.clone();
        tasks.spawn(async move {
            s.cancelled().await;
            Ok(())
        });
        tasks.spawn(async { Err(anyhow::anyhow!("broken")) });
        let got = join_roles(&mut tasks, &shutdown, Duration::from_secs(5)).await;
        assert!(shutdown.is_cancelled());
        assert_eq!(got.unwrap_err().to_string(), "broken");
    }
}
