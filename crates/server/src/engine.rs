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
/// Arbitration threads per LUN (COMPARE AND WRITE, PERSISTENT RESERVE OUT). CAWs of one block run one at a time
/// under its range anyway, and their flushes are shared (group commit), so a few threads carry thousands of
/// heartbeats a second.
pub const ARBITRATION_THREADS_PER_LUN: usize = 8;

/// How an engine's threads are scheduled (`--arbitration-priority`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadPriority {
    /// The default time-sharing class, as the reactor and the client's threads have.
    Normal,
    /// SCHED_FIFO at the lowest real-time priority (1), as sanlock runs its lease renewals: a woken thread gets a
    /// CPU at once instead of waiting behind busy time-sharing threads for a time slice. Measured with a probe
    /// under scripts/bench's heartbeat load (docs/performance.md): with a 100K IOPS read load saturating both
    /// CPUs, the heartbeat CAW's wait for its engine thread went from p99 1.6 ms to 56 us. The jobs are short (a compare, a write of at most a few
    /// blocks, a flush that sleeps), so they cannot starve the machine; the kernel's real-time throttling bounds
    /// them anyway.
    Realtime,
}

impl std::str::FromStr for ThreadPriority {
    type Err = String;
    fn from_str(text: &str) -> Result<ThreadPriority, String> {
        match text {
            "normal" => Ok(ThreadPriority::Normal),
            "realtime" => Ok(ThreadPriority::Realtime),
            _ => Err(format!(
                "unknown thread priority {text:?} (realtime or normal)"
            )),
        }
    }
}

/// What scheduling an engine's threads got: a real-time class needs CAP_SYS_NICE (or an RLIMIT_RTPRIO), and a
/// target without it still serves, at the priority it could get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduled {
    /// As asked for.
    AsAsked(ThreadPriority),
    /// SCHED_FIFO was refused (the reason); the threads run at nice -10 instead.
    RaisedNice(String),
    /// Neither could be had (the reason): the default class.
    Default(String),
}

impl std::fmt::Display for Scheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheduled::AsAsked(ThreadPriority::Normal) => write!(f, "normal priority"),
            Scheduled::AsAsked(ThreadPriority::Realtime) => write!(f, "SCHED_FIFO priority 1"),
            Scheduled::RaisedNice(why) => write!(f, "nice -10 (SCHED_FIFO refused: {why})"),
            Scheduled::Default(why) => write!(
                f,
                "normal priority (SCHED_FIFO and nice -10 refused: {why})"
            ),
        }
    }
}

/// Schedules the calling thread as `priority` asks, as far as it is allowed.
fn schedule_this_thread(priority: ThreadPriority) -> Scheduled {
    if priority == ThreadPriority::Normal {
        return Scheduled::AsAsked(priority);
    }
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param. SCHED_RESET_ON_FORK keeps anything
    // this thread might start from inheriting the class.
    let set = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if set == 0 {
        return Scheduled::AsAsked(priority);
    }
    let refused = std::io::Error::last_os_error().to_string();
    // SAFETY: PRIO_PROCESS with who = 0 is the calling thread on Linux.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } == 0 {
        return Scheduled::RaisedNice(refused);
    }
    Scheduled::Default(refused)
}

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
    scheduled: Scheduled,
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
    /// Starts `threads` workers named after `name` (e.g. "lun0") at normal priority: threads "io-lun0-N".
    pub fn with_threads(name: &str, threads: usize) -> std::io::Result<Arc<IoEngine>> {
        IoEngine::start(name, "io", threads, ThreadPriority::Normal)
    }

    /// Starts `threads` workers, threads "{role}-{name}-N", scheduled as `priority` asks (see
    /// [`IoEngine::scheduled`] for what they got).
    pub fn start(
        name: &str,
        role: &str,
        threads: usize,
        priority: ThreadPriority,
    ) -> std::io::Result<Arc<IoEngine>> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let (report, reported) = mpsc::channel();
        let threads = threads.max(1);
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            let report = report.clone();
            std::thread::Builder::new()
                .name(format!("{role}-{name}-{index}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || {
                    let _ = report.send(schedule_this_thread(priority));
                    drop(report);
                    worker(&receiver)
                })?;
        }
        drop(report);
        // Every thread reports before it takes a job; they all ask alike, so they all get alike.
        let scheduled = reported
            .iter()
            .take(threads)
            .last()
            .unwrap_or(Scheduled::AsAsked(ThreadPriority::Normal));
        Ok(Arc::new(IoEngine {
            name: name.to_string(),
            jobs: sender,
            threads,
            scheduled,
        }))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The scheduling its threads got.
    pub fn scheduled(&self) -> &Scheduled {
        &self.scheduled
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

    /// The scheduling policy of the calling thread, and its nice value.
    fn policy_and_nice() -> (i32, i32) {
        // SAFETY: both read the calling thread's own scheduling attributes.
        unsafe {
            (
                libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK,
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn realtime_threads_run_as_reported_and_normal_ones_stay_normal() {
        let realtime = IoEngine::start("rt", "arb", 2, ThreadPriority::Realtime).unwrap();
        let (policy, nice) = realtime.run(policy_and_nice).await.unwrap();
        match realtime.scheduled() {
            Scheduled::AsAsked(ThreadPriority::Realtime) => assert_eq!(policy, libc::SCHED_FIFO),
            Scheduled::RaisedNice(_) => assert_eq!((policy, nice), (libc::SCHED_OTHER, -10)),
            Scheduled::Default(_) => assert_eq!(policy, libc::SCHED_OTHER),
            other => panic!("a real-time engine reported {other:?}"),
        }
        let normal = IoEngine::with_threads("normal", 1).unwrap();
        assert_eq!(
            normal.scheduled(),
            &Scheduled::AsAsked(ThreadPriority::Normal)
        );
        let (policy, _) = normal.run(policy_and_nice).await.unwrap();
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
