//! PCT: probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi,
//! Nagarakatte, ASPLOS 2010).
//!
//! Each task gets a random priority when first seen (all above `depth`);
//! the highest-priority runnable task runs. At `depth - 1` change points,
//! drawn uniformly in `[1, k]` scheduling points, the task running at that
//! point drops to priority `depth - i` (below every initial priority). `k`
//! starts at the caller's estimate and grows to the longest execution seen.

use super::super::{Strategy, TaskId};
use super::execution_rng;
use rand::Rng;
use rand_pcg::Pcg64;

/// PCT with a given bug depth.
#[derive(Clone, Debug)]
pub struct Pct {
    seed: u64,
    depth: usize,
    k: u64,
    executions: u64,
    rng: Pcg64,
    priorities: Vec<Option<u64>>,
    change_points: Vec<u64>,
    next_change: usize,
    last: Option<TaskId>,
}

impl Pct {
    /// The largest depth [`new`](Self::new) keeps: a change point per
    /// scheduling point of the longest execution the checker allows is
    /// already more than PCT's analysis needs, and the per-execution list of
    /// change points must not grow with a number a user typed.
    pub const MAX_DEPTH: usize = 1 << 16;

    /// PCT for bugs of depth `depth` (clamped to `1..=MAX_DEPTH`: depth 1
    /// has no change point), with `steps_estimate` scheduling points per
    /// execution as the initial `k`.
    pub fn new(seed: u64, depth: usize, steps_estimate: u64) -> Self {
        Self {
            seed,
            depth: depth.clamp(1, Self::MAX_DEPTH),
            k: steps_estimate.max(1),
            executions: 0,
            rng: execution_rng(seed, 0),
            priorities: Vec::new(),
            change_points: Vec::new(),
            next_change: 0,
            last: None,
        }
    }

    /// The current estimate of scheduling points per execution.
    pub fn steps_estimate(&self) -> u64 {
        self.k
    }

    fn priority(&mut self, t: TaskId) -> u64 {
        if self.priorities.len() <= t {
            self.priorities.resize(t + 1, None);
        }
        let low = self.depth as u64;
        *self.priorities[t].get_or_insert_with(|| self.rng.gen_range(low..u64::MAX))
    }
}

impl Strategy for Pct {
    fn name(&self) -> String {
        format!("pct(seed={},depth={})", self.seed, self.depth)
    }

    fn next_execution(&mut self) -> bool {
        self.rng = execution_rng(self.seed, self.executions);
        self.executions += 1;
        self.priorities.clear();
        self.change_points = (1..self.depth)
            .map(|_| self.rng.gen_range(1..=self.k))
            .collect();
        self.change_points.sort_unstable();
        self.next_change = 0;
        self.last = None;
        true
    }

    fn choose(&mut self, runnable: &[TaskId], current: Option<TaskId>, step: u64) -> TaskId {
        while self.next_change < self.change_points.len()
            && step >= self.change_points[self.next_change]
        {
            self.next_change += 1;
            if let Some(victim) = current.or(self.last) {
                self.priority(victim);
                self.priorities[victim] = Some((self.depth - self.next_change) as u64);
            }
        }
        let mut best = runnable[0];
        let mut best_prio = self.priority(best);
        for &t in &runnable[1..] {
            let p = self.priority(t);
            if p > best_prio {
                best = t;
                best_prio = p;
            }
        }
        self.last = Some(best);
        best
    }

    fn end_execution(&mut self, steps: u64) -> Result<(), super::super::ScheduleError> {
        self.k = self.k.max(steps);
        Ok(())
    }
}
