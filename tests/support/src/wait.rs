//! Waiting on conditions with deadlines, and a runtime for long scenarios.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often [`eventually`] polls.
const POLL: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Ok` or `limit` passes, then panics with `what` and
/// the last error. Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_or(what, limit, String::new, check).await
}

/// Like [`eventually`]; on timeout the panic message ends with `context()` (e.g. the
/// agents' log tails).
pub async fn eventually_or<T, F, Fut, C>(what: &str, limit: Duration, context: C, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
    C: FnOnce() -> String,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return (v, started.elapsed()),
            Err(e) => e,
        };
        if started.elapsed() >= limit {
            panic!("timed out after {limit:?} waiting for {what}; last: {last}{}", context());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls a yes/no `cond` until it holds or `limit` passes (then panics naming `what`).
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, limit, || {
        let fut = cond();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
}

/// Nanoseconds since the Unix epoch (the clock of the agents' `lease-history.jsonl`).
pub fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// Runs an async test body in a two-worker tokio runtime on a thread with a 32 MiB
/// stack, and re-raises its panic. Use it instead of `#[tokio::test]` for long
/// scenarios: debug builds give every `.await` of a large future its own slot in the
/// caller's frame, so a scenario with a few dozen requests overflows the default 2 MiB
/// test thread stack.
///
/// # Panics
/// When the body panics, or the runtime or thread cannot be created.
pub fn run_test<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let thread = std::thread::Builder::new().name(name).stack_size(32 << 20).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build a tokio runtime: {e}"),
        };
        rt.block_on(body());
    });
    match thread.map(std::thread::JoinHandle::join) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("cannot start the test thread: {e}"),
    }
}
