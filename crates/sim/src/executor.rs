//! A single-threaded executor over simulated time. Tasks are the real `cluster` futures; they wait only on the
//! simulated clock and on simulated replies, both of which the world completes by processing its event queue. With
//! no task ready, time jumps to the next event. Ready tasks are polled in task-id order, so a run depends on the
//! seed alone.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub type TaskId = usize;
pub type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The set of tasks to poll next, shared with their wakers.
#[derive(Clone, Default)]
pub struct ReadySet(Arc<Mutex<BTreeSet<TaskId>>>);

impl ReadySet {
    pub fn insert(&self, id: TaskId) {
        lock(&self.0).insert(id);
    }

    pub fn pop(&self) -> Option<TaskId> {
        lock(&self.0).pop_first()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.0).is_empty()
    }
}

struct TaskWaker {
    id: TaskId,
    ready: ReadySet,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.insert(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.insert(self.id);
    }
}

struct Task {
    /// The actor (host) the task belongs to: pausing or crashing an actor affects all its tasks.
    actor: usize,
    future: BoxedTask,
    waker: Waker,
}

/// The tasks of a simulation.
#[derive(Default)]
pub struct Executor {
    tasks: Vec<Option<Task>>,
    ready: ReadySet,
    /// Tasks woken while their actor was paused: polled after it resumes.
    parked: BTreeSet<TaskId>,
}

impl Executor {
    pub fn ready_set(&self) -> ReadySet {
        self.ready.clone()
    }

    pub fn spawn(&mut self, actor: usize, future: BoxedTask) -> TaskId {
        let id = self.tasks.len();
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.ready.clone(),
        }));
        self.tasks.push(Some(Task {
            actor,
            future,
            waker,
        }));
        self.ready.insert(id);
        id
    }

    /// Drops every task of `actor` (a crash): their futures, with everything they were waiting for, are gone.
    pub fn kill_actor(&mut self, actor: usize) {
        for slot in &mut self.tasks {
            if slot.as_ref().is_some_and(|t| t.actor == actor) {
                *slot = None;
            }
        }
    }

    /// Makes the parked tasks of a resumed actor ready again.
    pub fn resume_actor(&mut self, actor: usize) {
        let ids: Vec<TaskId> = self
            .parked
            .iter()
            .copied()
            .filter(|&id| self.tasks[id].as_ref().is_some_and(|t| t.actor == actor))
            .collect();
        for id in ids {
            self.parked.remove(&id);
            self.ready.insert(id);
        }
    }

    /// Polls ready tasks until none is ready. Returns how many polls it made.
    pub fn run_ready(&mut self, is_paused: impl Fn(usize) -> bool) -> usize {
        let mut polls = 0;
        while let Some(id) = self.ready.pop() {
            let Some(task) = self.tasks.get_mut(id).and_then(|t| t.as_mut()) else {
                continue;
            };
            if is_paused(task.actor) {
                self.parked.insert(id);
                continue;
            }
            polls += 1;
            let waker = task.waker.clone();
            let mut context = Context::from_waker(&waker);
            if let Poll::Ready(()) = task.future.as_mut().poll(&mut context) {
                self.tasks[id] = None;
            }
        }
        polls
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
