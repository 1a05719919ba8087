//! Uniformly random scheduling.

use super::super::{Strategy, TaskId};
use super::execution_rng;
use rand::Rng;
use rand_pcg::Pcg64;

/// Picks uniformly among the runnable tasks at every decision.
#[derive(Clone, Debug)]
pub struct Random {
    seed: u64,
    executions: u64,
    rng: Pcg64,
}

impl Random {
    /// A random strategy; the same seed gives the same sequence of schedules.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            executions: 0,
            rng: execution_rng(seed, 0),
        }
    }
}

impl Strategy for Random {
    fn name(&self) -> String {
        format!("random(seed={})", self.seed)
    }

    fn next_execution(&mut self) -> bool {
        self.rng = execution_rng(self.seed, self.executions);
        self.executions += 1;
        true
    }

    fn choose(&mut self, runnable: &[TaskId], _current: Option<TaskId>, _step: u64) -> TaskId {
        runnable[self.rng.gen_range(0..runnable.len())]
    }
}
