//! Queues of jobs per environment, each drained by one task at a time.
//!
//! Writers of one environment run one at a time anyway (they hold its lock until they commit),
//! and each used to pay its own commit, fsync included, while the others waited. Queued here,
//! the writes that arrive while one transaction runs are taken together by the next one: one
//! lock, one data key, one commit for all of them (group commit). The draining task is spawned,
//! not run by a request, so that a client that goes away cannot cancel the others' writes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ids::EnvironmentId;

/// The jobs waiting per environment. An environment is in the map exactly while a task drains
/// it.
#[derive(Debug)]
pub struct WriteQueues<J> {
    queues: Mutex<HashMap<EnvironmentId, VecDeque<J>>>,
    /// Jobs one environment may have waiting; more are refused.
    max_waiting: usize,
}

/// What [`WriteQueues::push`] did with a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<J> {
    /// Queued behind the task already draining the environment.
    Queued,
    /// Queued, and no task drains the environment: the caller must start one.
    StartDrain,
    /// Refused: the environment has too many jobs waiting.
    Full(J),
}

impl<J> WriteQueues<J> {
    pub fn new(max_waiting: usize) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            max_waiting,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<EnvironmentId, VecDeque<J>>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn push(&self, env: EnvironmentId, job: J) -> Pushed<J> {
        let mut queues = self.lock();
        match queues.get_mut(&env) {
            Some(queue) if queue.len() >= self.max_waiting => Pushed::Full(job),
            Some(queue) => {
                queue.push_back(job);
                Pushed::Queued
            }
            None => {
                queues.insert(env, VecDeque::from([job]));
                Pushed::StartDrain
            }
        }
    }

    /// The next jobs of `env`, at most `max`, oldest first. None left: the environment leaves
    /// the map, and the draining task must end (the next push starts another).
    pub fn take(&self, env: EnvironmentId, max: usize) -> Vec<J> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(&env) else {
            return Vec::new();
        };
        if queue.is_empty() {
            queues.remove(&env);
            return Vec::new();
        }
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// How many jobs of `env` wait (not counting those being written).
    pub fn waiting(&self, env: EnvironmentId) -> usize {
        self.lock().get(&env).map_or(0, VecDeque::len)
    }

    /// Drops the jobs of `env` and its place: its draining task failed.
    fn abandon(&self, env: EnvironmentId) {
        self.lock().remove(&env);
    }
}

/// Held by a draining task: should it panic, the environment's waiting jobs are dropped (their
/// requests get an error) and the next push starts a new task, instead of queueing forever.
#[derive(Debug)]
pub struct DrainGuard<J> {
    pub queues: Arc<WriteQueues<J>>,
    pub env: EnvironmentId,
}

impl<J> Drop for DrainGuard<J> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.queues.abandon(self.env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_drain_per_environment_until_its_queue_is_empty() {
        let queues = WriteQueues::new(3);
        let (a, b) = (EnvironmentId::new(), EnvironmentId::new());
        assert_eq!(queues.push(a, 1), Pushed::StartDrain);
        assert_eq!(queues.push(a, 2), Pushed::Queued);
        assert_eq!(queues.push(a, 3), Pushed::Queued);
        assert_eq!(queues.push(a, 4), Pushed::Full(4));
        assert_eq!(queues.push(b, 9), Pushed::StartDrain);
        assert_eq!(queues.take(a, 2), vec![1, 2]);
        assert_eq!(queues.push(a, 5), Pushed::Queued);
        assert_eq!(queues.take(a, 8), vec![3, 5]);
        assert_eq!(queues.take(a, 8), Vec::<i32>::new());
        assert_eq!(queues.push(a, 6), Pushed::StartDrain, "the drain ended");
        assert_eq!(queues.take(b, 8), vec![9]);
    }

    #[test]
    fn a_drain_that_panics_gives_its_place_up() {
        let queues = Arc::new(WriteQueues::new(8));
        let env = EnvironmentId::new();
        assert_eq!(queues.push(env, 1), Pushed::StartDrain);
        assert_eq!(queues.push(env, 2), Pushed::Queued);
        let q = queues.clone();
        let drain = std::thread::spawn(move || {
            let _guard = DrainGuard { queues: q, env };
            panic!("a draining task fails");
        });
        assert!(drain.join().is_err());
        assert_eq!(queues.push(env, 3), Pushed::StartDrain);
    }
}
