//! Polling with deadlines: e2e assertions are about outcomes, never about speed, so every wait is a
//! generous deadline and the error says what was awaited and what was last seen.
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Default deadline for anything that should converge on a healthy machine. Generous because CI shares
/// 2 cores with every other test, and a restarted agent re-attaches every runtime (eBPF loads, DWARF
/// analysis, bpftrace) before its status is fresh; only a failing run ever waits this long.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// Calls `probe` until it returns `Ok(Some(_))` or the deadline passes. `Ok(None)` and `Err` both mean
/// "not yet"; the last error or the last `seen` note is in the failure message.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`until`], but `probe` explains what it sees when the condition does not hold yet.
pub async fn until_ok<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    until(what, timeout, || {
        let fut = probe();
        async move { fut.await.map(Some) }
    })
    .await
}
