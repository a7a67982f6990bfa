//! Waiting for a condition with a deadline: poll a check until it holds or time is up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The condition did not hold in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}")]
pub struct TimedOut {
    pub what: String,
    pub after: Duration,
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(timeout, Duration::from_millis(50), what, check).await
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn poll_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until a GET of `url` answers 2xx (a server is up), or fails after `timeout`.
pub async fn wait_for_success(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    what: &str,
) -> Result<(), TimedOut> {
    wait_until(timeout, what, || async {
        let resp = http.get(url).send().await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_the_check_holds_or_times_out() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), "three tries", || {
            n += 1;
            let v = n;
            async move { (v == 3).then_some(v) }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
        let err = wait_until(Duration::from_millis(100), "never", || async { None::<()> })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 100ms waiting for never");
    }
}
