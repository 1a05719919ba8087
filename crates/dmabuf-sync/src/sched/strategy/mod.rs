//! Schedule-choosing strategies, one per file.
//!
//! | strategy | explores | executions | finds |
//! |---|---|---|---|
//! | [`Random`] | uniformly random choice at every decision | unbounded | shallow races, quickly |
//! | [`Pct`] | random priorities with `depth - 1` priority change points (Burckhardt et al., ASPLOS 2010) | unbounded | a bug of depth `d` with probability at least `1/(n k^(d-1))` per run |
//! | [`Dfs`] | every decision sequence, depth-first, up to a number of decisions | until exhausted | everything within the bound; "exhaustive" only when no run hit the bound |
//! | [`Dpor`] | one execution per Mazurkiewicz trace class it cannot prove redundant (source-set DPOR with sleep sets) | until exhausted | the same outcomes as [`Dfs`], in far fewer executions; "exhaustive" only when no bound was hit |
//! | [`Replay`] | one recorded schedule | one | reproduces a run (divergence reported) |
//!
//! Randomised strategies derive each execution's generator from the seed
//! and the execution's index, so execution `i` of a seed is the same
//! whatever ran before it in the process ([`Random`] only: [`Pct`] also
//! learns the length of the executions before).
//!
//! # Splitting one search over several machines
//!
//! [`Dfs::shard`] and [`Dpor::shard`] make a search explore only its part
//! ([`SearchShard`]) of the tree. The *split node* is the first decision of
//! an execution (the engine asks a strategy only when at least two tasks
//! can run, so everything before it is forced, and every shard replays the
//! same forced prefix); for [`Dpor`], the first one made after a
//! [`before_split`](super::before_split) scope, if the program opens one
//! (a choice made before anything else runs: every shard then explores
//! every alternative, and splits below each). Its choices, the task the unsharded search would
//! run first and then the others by ascending id, are dealt round-robin:
//! choice `i` is shard `i % count`'s. A shard explores the subtrees of its
//! own choices, each exactly as the unsharded search would below a node
//! whose every choice is explored; the union over the shards covers every
//! execution class the unsharded search covers (DFS: the very same
//! executions, partitioned). DPOR needs, below choice `i`, the earlier
//! choices asleep with their first segments: a shard runs each earlier
//! choice it does not own once, as a *probe* ([`Dpor::is_probe`]) that the
//! caller neither counts nor judges. A program with no decision at all is
//! one choice, shard 0's; a shard that owns no choice runs one probe and is
//! finished (its part is empty, and exhaustive).

mod dfs;
mod dpor;
mod pct;
mod random;
mod replay;

pub use dfs::Dfs;
pub use dpor::{Dpor, DporStats};
pub use pct::Pct;
pub use random::Random;
pub use replay::Replay;

#[cfg(test)]
mod shard_tests;

/// Part `index` of a systematic search split into `count` parts (see the
/// module documentation): the choices `i` at the split node with
/// `i % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchShard {
    /// This part, `0..count`.
    pub index: usize,
    /// Number of parts, at least 1.
    pub count: usize,
}

impl SearchShard {
    /// Part `index` of `count`; `None` unless `index < count`.
    pub fn new(index: usize, count: usize) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }

    /// Whether choice `i` of the split node is this part's.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// How many of `choices` choices are this part's.
    pub fn owned_of(&self, choices: usize) -> usize {
        (0..choices).filter(|&i| self.owns(i)).count()
    }
}

/// Where a search stands in its part of a split search (shared by the
/// systematic strategies): the part, whether the running execution is not
/// the part's own (a probe), and the split node's branches once known.
#[derive(Clone, Copy, Debug, Default)]
struct PartState {
    shard: Option<SearchShard>,
    probe: bool,
    split_choices: Option<usize>,
}

impl PartState {
    /// `shard`'s part; a part of one is the whole search.
    fn of(shard: SearchShard) -> Self {
        Self {
            shard: (shard.count > 1).then_some(shard),
            ..Self::default()
        }
    }

    /// A sharded execution that ended without a decision: the program has
    /// one branch, 0. True when this settled it.
    fn settle(&mut self) -> bool {
        match self.shard {
            Some(sh) if self.split_choices.is_none() => {
                self.split_choices = Some(1);
                self.probe = !sh.owns(0);
                true
            }
            _ => false,
        }
    }
}

use rand::SeedableRng;
use rand_pcg::Pcg64;

/// The generator of execution `index` of `seed` (splitmix64 finaliser, so
/// nearby seeds and indices give unrelated streams).
fn execution_rng(seed: u64, index: u64) -> Pcg64 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Pcg64::seed_from_u64(z ^ (z >> 31))
}

crate::named_enum! {
    /// A bound that cut a systematic search (so it is not exhaustive); its
    /// name in reports.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Bound {
        /// An execution had more decisions than the search branches on.
        Depth => "depth",
        /// An execution reached `RunConfig::max_steps`.
        Steps => "steps",
        /// The caller stopped the search after its budget of executions.
        Executions => "executions",
        /// The program was not deterministic under the scheduler, so the tree
        /// the search walked is not the program's.
        Nondeterminism => "nondeterminism",
        /// What was judged came from operations the search left unordered
        /// ([`unobserved`](crate::sched::unobserved)): it covers only the
        /// places where the schedules happened to run them. Set by the
        /// caller, which knows what its verdicts are judged from.
        Unobserved => "unobserved",
    }
}
