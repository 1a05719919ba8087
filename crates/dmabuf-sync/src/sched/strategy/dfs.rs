//! Bounded depth-first search over decision sequences.
//!
//! The tree: a node per decision, a branch per runnable task, the current
//! task first (so the first execution is the one with fewest preemptions),
//! then ascending ids. An execution replays the path to the node being
//! explored and then takes first branches. After it, the deepest node with
//! an untried branch advances to its next branch and everything below it is
//! forgotten. Decisions beyond `max_decisions` take the first branch without
//! branching, and `hit_bound` records that the tree was cut.
//!
//! Exhaustive ([`Dfs::bounds_hit`] empty after [`Dfs::is_exhausted`]) means
//! every branch was run, no execution had more decisions than the bound, no
//! execution ended at the step limit (its tail was never explored) and the
//! program behaved deterministically.
//!
//! A part of the search ([`Dfs::shard`], [`SearchShard`]) takes only its
//! own branches of the first node: the shards' executions partition the
//! unsharded search's. A shard that owns no branch runs one execution that
//! is not its own ([`Dfs::is_probe`]) and is finished.

use super::super::{Outcome, ScheduleError, Strategy, TaskId};
use super::{Bound, PartState, SearchShard};

#[derive(Clone, Debug)]
struct Node {
    options: Vec<TaskId>,
    taken: usize,
}

/// Depth-first enumeration of schedules.
#[derive(Clone, Debug)]
pub struct Dfs {
    max_decisions: usize,
    path: Vec<Node>,
    pos: usize,
    started: bool,
    exhausted: bool,
    hit_bound: bool,
    hit_steps: bool,
    nondeterministic: bool,
    executions: u64,
    max_depth: usize,
    error: Option<ScheduleError>,
    /// The part of the search explored.
    part: PartState,
}

impl Dfs {
    /// A DFS that branches on at most `max_decisions` decisions per
    /// execution.
    pub fn new(max_decisions: usize) -> Self {
        Self {
            max_decisions,
            path: Vec::new(),
            pos: 0,
            started: false,
            exhausted: false,
            hit_bound: false,
            hit_steps: false,
            nondeterministic: false,
            executions: 0,
            max_depth: 0,
            error: None,
            part: PartState::default(),
        }
    }

    /// This search takes only `shard`'s branches of the first node (see
    /// the module documentation); a part of one is the whole search.
    pub fn shard(mut self, shard: SearchShard) -> Self {
        self.part = PartState::of(shard);
        self
    }

    /// Whether the execution just run is not this shard's (to be neither
    /// counted nor judged).
    pub fn is_probe(&self) -> bool {
        self.part.probe
    }

    /// Branches of the first node (1 for a program without decisions), once
    /// known; `None` for a whole search.
    pub fn split_choices(&self) -> Option<usize> {
        self.part.split_choices
    }

    /// The bounds some execution hit so far (empty and
    /// [`is_exhausted`](Self::is_exhausted): the search was exhaustive).
    pub fn bounds_hit(&self) -> Vec<Bound> {
        let mut v = Vec::new();
        if self.hit_bound {
            v.push(Bound::Depth);
        }
        if self.hit_steps {
            v.push(Bound::Steps);
        }
        if self.nondeterministic {
            v.push(Bound::Nondeterminism);
        }
        v
    }

    /// The most decisions any execution made.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Whether every branch within the bound has been run.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// Whether some execution had more decisions than the bound (then the
    /// search is not exhaustive even when exhausted).
    pub fn hit_bound(&self) -> bool {
        self.hit_bound
    }

    /// Executions started so far.
    pub fn executions(&self) -> u64 {
        self.executions
    }

    fn options(runnable: &[TaskId], current: Option<TaskId>) -> Vec<TaskId> {
        let mut v = Vec::with_capacity(runnable.len());
        v.extend(current);
        v.extend(runnable.iter().filter(|&&t| Some(t) != current));
        v
    }
}

impl Strategy for Dfs {
    fn name(&self) -> String {
        format!("dfs(max_decisions={})", self.max_decisions)
    }

    fn next_execution(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        if self.started {
            if self.part.probe {
                // A shard without a branch of its own.
                self.exhausted = true;
                return false;
            }
            self.path.truncate(self.pos);
            loop {
                // The first node of a part: its next own branch.
                let step = match self.part.shard {
                    Some(sh) if self.path.len() == 1 => sh.count,
                    _ => 1,
                };
                let Some(n) = self.path.last_mut() else {
                    break;
                };
                if n.taken + step < n.options.len() {
                    n.taken += step;
                    break;
                }
                self.path.pop();
            }
            if self.path.is_empty() {
                self.exhausted = true;
                return false;
            }
        }
        self.started = true;
        self.pos = 0;
        self.executions += 1;
        true
    }

    fn choose(&mut self, runnable: &[TaskId], current: Option<TaskId>, _step: u64) -> TaskId {
        let options = Self::options(runnable, current);
        let decision = self.pos;
        if self.part.probe {
            return options[0];
        }
        if let Some(n) = self.path.get(decision) {
            if n.options != options {
                self.error.get_or_insert(ScheduleError::Nondeterministic {
                    decision,
                    expected: n.options.clone(),
                    found: options.clone(),
                });
                // The rest of the recorded path is meaningless now.
                self.path.truncate(decision);
            } else {
                self.pos += 1;
                return n.options[n.taken];
            }
        }
        if decision >= self.max_decisions {
            if decision == 0 && self.part.shard.is_some() {
                // No node at all: one branch.
                self.part.settle();
                if self.part.probe {
                    return options[0];
                }
            }
            self.hit_bound = true;
            return options[0];
        }
        let mut taken = 0;
        if decision == 0
            && let Some(sh) = self.part.shard
        {
            self.part.split_choices = Some(options.len());
            if sh.index >= options.len() {
                self.part.probe = true;
                return options[0];
            }
            taken = sh.index;
        }
        let chosen = options[taken];
        self.path.push(Node { options, taken });
        self.pos += 1;
        chosen
    }

    fn on_outcome(&mut self, outcome: &Outcome) {
        self.part.settle();
        if *outcome == Outcome::StepLimit && !self.part.probe {
            self.hit_steps = true;
        }
    }

    fn end_execution(&mut self, _steps: u64) -> Result<(), ScheduleError> {
        self.part.settle();
        if self.part.probe {
            self.executions -= 1;
            self.error = None;
            return Ok(());
        }
        self.max_depth = self.max_depth.max(self.pos);
        if let Some(n) = self.path.get(self.pos)
            && self.error.is_none()
        {
            self.error = Some(ScheduleError::Nondeterministic {
                decision: self.pos,
                expected: n.options.clone(),
                found: Vec::new(),
            });
        }
        if self.error.is_some() {
            self.nondeterministic = true;
        }
        self.error.take().map_or(Ok(()), Err)
    }
}
