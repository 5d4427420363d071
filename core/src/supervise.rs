//! Supervision of background tasks (relay, dispatchers, sweeper, retention).
//!
//! Invariant: every background task is supervised. A task that returns or panics while
//! the process is not shutting down is logged with its cause, counted
//! (`herald_task_restarts_total{task}`), marked `restarting` for `/readyz`, and started
//! again with exponential backoff (1 s doubling to 60 s, reset after a minute of
//! running). A process never goes on as a silent half-process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// What `/readyz` shows of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    /// Ended or panicked; waiting out its backoff before the next start.
    Restarting,
    Stopped,
}

/// The state of every supervised task, by name.
pub type TaskStates = Arc<Mutex<BTreeMap<&'static str, TaskState>>>;

#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<()>,
    states: TaskStates,
    first_backoff: Option<Duration>,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `fut` on a thread of its own, in a single-threaded runtime, and waits for it
/// (a panic in it is resumed here, so a supervisor sees it as one). Its wake-ups are
/// not queued behind other tasks' work: the OS runs a mostly idle thread as soon as it
/// wakes, so latency-critical work there (the webhook dispatcher) is not delayed by a
/// busy API on the same cores.
pub async fn on_own_thread<Fut>(name: &str, fut: Fut) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        let ran = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Box::new(format!("cannot start a runtime: {e}")) as Box<dyn std::any::Any + Send>)
            .and_then(|rt| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(fut))));
        let _ = tx.send(ran);
    })?;
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => Err(anyhow::anyhow!("its thread ended without a result")),
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// For tests: the first restart waits this long instead of a second.
    pub fn with_first_backoff(mut self, d: Duration) -> Self {
        self.first_backoff = Some(d);
        self
    }

    pub fn states(&self) -> TaskStates {
        self.states.clone()
    }

    /// Runs `make()`'s task until `stop` turns true, restarting it whenever it ends or
    /// panics before that.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, mut stop: watch::Receiver<bool>, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let states = self.states.clone();
        let first = self.first_backoff.unwrap_or(Duration::from_secs(1));
        let set = move |s: TaskState| {
            states.lock().expect("task states").insert(name, s);
        };
        set(TaskState::Running);
        self.tasks.spawn(async move {
            let mut backoff = first;
            loop {
                set(TaskState::Running);
                let started = Instant::now();
                let result = tokio::spawn(make()).await;
                if *stop.borrow() {
                    break;
                }
                let cause = match result {
                    Ok(Ok(())) => "it ended unexpectedly".to_owned(),
                    Ok(Err(e)) => format!("it failed: {e:#}"),
                    Err(j) if j.is_panic() => format!("it panicked: {}", panic_text(j.into_panic())),
                    Err(j) => format!("it was cancelled: {j}"),
                };
                crate::metrics::task_restarted(name);
                set(TaskState::Restarting);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = first;
                }
                tracing::error!(task = name, cause = %cause, restart_in_ms = backoff.as_millis() as u64, "background task stopped; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            set(TaskState::Stopped);
        });
    }

    /// Waits for every task to stop (after `stop` was set).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_reported() {
        let (stop_tx, stop) = watch::channel(false);
        let mut s = Supervisor::new().with_first_backoff(Duration::from_millis(10));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let stop_inner = stop.clone();
        s.spawn("flaky", stop.clone(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let mut stop_inner = stop_inner.clone();
            async move {
                match n {
                    0 => panic!("first run panics"),
                    1 => anyhow::bail!("second run fails"),
                    2 => Ok(()),
                    _ => {
                        let _ = stop_inner.changed().await;
                        Ok(())
                    }
                }
            }
        });
        let states = s.states();
        for _ in 0..200 {
            if runs.load(Ordering::SeqCst) >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 4, "restarted after a panic, an error and an early end");
        assert_eq!(states.lock().unwrap()["flaky"], TaskState::Running);
        stop_tx.send(true).unwrap();
        s.join().await;
        assert_eq!(states.lock().unwrap()["flaky"], TaskState::Stopped);
    }
}
