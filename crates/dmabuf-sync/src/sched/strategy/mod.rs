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
//! whatever ran before it in the process.

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
    }
}
