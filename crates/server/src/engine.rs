//! The per-LUN I/O engine: where block I/O that may wait for the disk runs, so no reactor thread ever waits.
//!
//! This engine is a bounded pool of blocking threads per logical unit, as tgt's bs_rdwr has: a pread that
//! misses the page cache, an fdatasync for FUA or SYNCHRONIZE CACHE, an fsync of APTPL state, or a SANITIZE
//! overwrite occupies one of the LUN's threads while the reactor keeps serving every connection. The pool is
//! per LUN so that a slow LUN cannot take the threads another LUN's commands need. Page-cache hits of READ do not
//! come here at all: the runtime serves them inline with RWF_NOWAIT (see `task`).
//!
//! A job owns everything it touches (buffers, the command, its range guard) and hands it back when it is done,
//! so a command whose connection drops or that is aborted never frees a buffer the job still uses.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::oneshot;

/// The I/O engine for READ and WRITE (`--io-engine`); the thread pool always serves the other commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngineKind {
    /// io_uring: submitted from the reactor to the backing's descriptor, no thread hand-off.
    Uring,
    /// The bounded blocking-thread pool.
    Threads,
}

impl std::str::FromStr for IoEngineKind {
    type Err = String;
    fn from_str(text: &str) -> Result<IoEngineKind, String> {
        match text {
            "uring" => Ok(IoEngineKind::Uring),
            "threads" => Ok(IoEngineKind::Threads),
            _ => Err(format!("unknown I/O engine {text:?} (uring or threads)")),
        }
    }
}

/// Threads per LUN: enough to keep a queue depth of 32 in flight on a disk, as fio's QD32 comparison needs.
pub const DEFAULT_THREADS_PER_LUN: usize = 32;
/// Stack of each engine thread: jobs are store calls with heap buffers, so they need little.
const THREAD_STACK_BYTES: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job produced no result.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("the I/O engine of {0} has stopped")]
    Stopped(String),
    #[error("an I/O job of {0} panicked")]
    Panicked(String),
}

/// A bounded pool of blocking threads serving one LUN.
pub struct IoEngine {
    name: String,
    /// The queue the workers take jobs from (`Sender` is `Sync`: no lock of ours on the submit path).
    jobs: mpsc::Sender<Job>,
    threads: usize,
}

impl std::fmt::Debug for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoEngine")
            .field("name", &self.name)
            .field("threads", &self.threads)
            .finish()
    }
}

impl IoEngine {
    /// Starts `threads` workers named after `name` (e.g. "lun0").
    pub fn with_threads(name: &str, threads: usize) -> std::io::Result<Arc<IoEngine>> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = threads.max(1);
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("io-{name}-{index}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || worker(&receiver))?;
        }
        Ok(Arc::new(IoEngine {
            name: name.to_string(),
            jobs: sender,
            threads,
        }))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on one of the engine's threads and waits (asynchronously) for its result.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (done, result) = oneshot::channel();
        let wrapped: Job = Box::new(move || {
            // A panicking job must not take its worker with it; the command gets an internal failure instead.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
            let _ = done.send(outcome);
        });
        let sent = self.jobs.send(wrapped);
        if sent.is_err() {
            return Err(EngineError::Stopped(self.name.clone()));
        }
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_panic)) => Err(EngineError::Panicked(self.name.clone())),
            Err(_) => Err(EngineError::Stopped(self.name.clone())),
        }
    }
}

fn worker(receiver: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while taking one job off the queue.
        let job = match receiver.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // the engine was dropped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_in_parallel_and_a_panic_is_reported_not_fatal() {
        let engine = IoEngine::with_threads("test", 4).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let jobs: Vec<_> = (0..4)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let engine = Arc::clone(&engine);
                tokio::spawn(async move {
                    engine
                        .run(move || {
                            // Only returns when all four run at once.
                            barrier.wait();
                            i * 2
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for job in jobs {
            results.push(job.await.unwrap().unwrap());
        }
        assert_eq!(results, vec![0, 2, 4, 6]);
        let panicked = engine.run(|| panic!("boom")).await;
        assert!(matches!(panicked, Err(EngineError::Panicked(_))));
        assert_eq!(engine.run(|| 7).await.unwrap(), 7, "the worker survived");
    }
}
