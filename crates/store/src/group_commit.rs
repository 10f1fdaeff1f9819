//! Group commit: concurrent flushes of one file share fdatasync calls.
//!
//! A FUA write, a SYNCHRONIZE CACHE or a COMPARE AND WRITE with FUA needs every write it depends on to be on the
//! medium before its GOOD (SBC-4 4.15, 5.24). One fdatasync covers every write completed before it *starts*, so
//! callers that arrive while one runs need not each run their own: they wait for the next one, which starts as
//! soon as the running one ends and covers all of them. With a thousand heartbeats a second, each a COMPARE AND
//! WRITE with FUA, that is the difference between a queue of fdatasyncs behind the journal and one or two in flight.
//!
//! The wait blocks the calling thread: callers are I/O engine threads, never reactor threads.

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Flush generations of one file. Generation `n` is the n-th flush started.
#[derive(Debug, Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Generations started so far (the running one included).
    started: u64,
    /// The newest generation that has ended.
    finished: u64,
    running: bool,
    /// The newest generation that failed, with its error (kept to report to everyone it covered).
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl GroupCommit {
    /// Makes every write completed before this call durable, running `sync` (an fdatasync) or sharing a run of it
    /// that starts after this call. An error of the run that covers this call is this call's error, also when a
    /// later run succeeds: the kernel reports a writeback error once, and every caller it covered must hear it.
    pub fn flush(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        // A run that is already going may have started before our writes completed: only the next one counts.
        let needed = state.started + 1;
        let mut sync = Some(sync);
        loop {
            if state.finished >= needed {
                return state.outcome_for(needed);
            }
            if state.running {
                state = self
                    .finished
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let Some(run) = sync.take() else {
                // Unreachable: we run at most once, and our own run ends with finished >= needed.
                return state.outcome_for(needed);
            };
            state.running = true;
            state.started += 1;
            let generation = state.started;
            drop(state);
            let result = run();
            state = self.lock();
            state.running = false;
            state.finished = generation;
            if let Err(error) = result {
                state.failed = Some((generation, error.kind(), error.to_string()));
            }
            self.finished.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn outcome_for(&self, needed: u64) -> io::Result<()> {
        match &self.failed {
            Some((generation, kind, message)) if *generation >= needed => {
                Err(io::Error::new(*kind, message.clone()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn callers_during_a_run_share_the_next_run() {
        let commits = Arc::new(GroupCommit::default());
        let runs = Arc::new(AtomicU32::new(0));
        // The first caller's run is slow; eight callers arrive meanwhile and must be served by one more run.
        let first = {
            let (commits, runs) = (Arc::clone(&commits), Arc::clone(&runs));
            thread::spawn(move || {
                commits.flush(|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(200));
                    Ok(())
                })
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        let barrier = Arc::new(Barrier::new(8));
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (commits, runs, barrier) = (
                    Arc::clone(&commits),
                    Arc::clone(&runs),
                    Arc::clone(&barrier),
                );
                thread::spawn(move || {
                    barrier.wait();
                    commits.flush(|| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(50));
                        Ok(())
                    })
                })
            })
            .collect();
        first.join().unwrap().unwrap();
        for waiter in waiters {
            waiter.join().unwrap().unwrap();
        }
        // The eight arrived while the first run was sleeping (it sleeps 200 ms; they arrive at once), so one run
        // covered them all; a caller that came late would have added a run, never removed one.
        let total = runs.load(Ordering::SeqCst);
        assert!((2..=3).contains(&total), "{total} runs for 9 callers");
    }

    #[test]
    fn a_caller_never_takes_a_run_that_started_before_it() {
        let commits = GroupCommit::default();
        commits.flush(|| Ok(())).unwrap();
        let mut ran = false;
        commits
            .flush(|| {
                ran = true;
                Ok(())
            })
            .unwrap();
        assert!(
            ran,
            "a finished run does not cover a caller that arrives after it"
        );
    }

    #[test]
    fn a_failed_run_fails_every_caller_it_covered_and_later_runs_start_clean() {
        let commits = GroupCommit::default();
        let error = commits
            .flush(|| Err(io::Error::other("fdatasync: EIO")))
            .unwrap_err();
        assert_eq!(error.to_string(), "fdatasync: EIO");
        commits.flush(|| Ok(())).unwrap();
    }
}
