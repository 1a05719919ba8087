//! Suite `dma-buf-fence-chain` (st-dma-fence-chain.c).

use crate::dma_fence::{Fence, NamedOps, SignalHandle};
use crate::dma_fence_chain::{chain, find_seqno};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Mutex, thread};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const CHAIN_SZ: usize = 4096;

/// The suites' `mock_fence_ops`: names only.
fn mock_ops() -> NamedOps {
    NamedOps::new("mock", "mock")
}

fn mock_fence() -> (Fence, SignalHandle) {
    Fence::init(mock_ops(), 0, 0)
}

/// `struct fence_chains`: `fences[i]` is the payload of `chains[i]`, every
/// node armed. Dropping it is `fence_chains_fini`: every fence is signalled.
struct FenceChains {
    chains: Vec<Fence>,
    fences: Vec<Fence>,
    handles: Vec<Mutex<Option<SignalHandle>>>,
    tail: Fence,
}

impl FenceChains {
    fn init(count: usize, seqno_fn: impl Fn(usize) -> u64) -> FenceChains {
        let mut chains: Vec<Fence> = Vec::with_capacity(count);
        let mut fences = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let (f, h) = mock_fence();
            let c = chain(chains.last().cloned(), f.clone(), seqno_fn(i));
            c.enable_sw_signaling();
            fences.push(f);
            handles.push(Mutex::new(Some(h)));
            chains.push(c);
        }
        let tail = chains.last().cloned().expect("empty fence chain");
        FenceChains {
            chains,
            fences,
            handles,
            tail,
        }
    }

    fn len(&self) -> usize {
        self.chains.len()
    }

    /// `dma_fence_signal(fc.fences[i])`; signalling twice is a no-op.
    fn signal(&self, i: usize) {
        let h = self.handles[i].lock().take();
        if let Some(h) = h {
            let _ = h.signal();
        }
    }
}

impl Drop for FenceChains {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.signal(i);
        }
    }
}

fn seqno_inc(i: usize) -> u64 {
    i as u64 + 1
}

fn seqno_inc2(i: usize) -> u64 {
    2 * i as u64 + 2
}

#[test]
fn test_sanitycheck() {
    let (f, h) = mock_fence();
    let c = chain(None, f.clone(), 1);
    c.enable_sw_signaling();
    h.signal().unwrap();
    assert!(c.is_signaled());
}

#[test]
fn test_find_seqno() {
    let fc = FenceChains::init(64, seqno_inc);
    assert_eq!(
        find_seqno(&fc.tail, 0).unwrap(),
        Some(fc.tail.clone()),
        "reported {} for find_seqno(0)!",
        0
    );
    for i in 0..fc.len() {
        let seqno = i as u64 + 1;
        let found = find_seqno(&fc.tail, seqno).expect("error reported for finding self");
        assert_eq!(
            found.as_ref(),
            Some(&fc.chains[i]),
            "incorrect fence reported"
        );

        let found = find_seqno(&fc.chains[i], seqno).expect("error reported for finding self");
        assert_eq!(
            found.as_ref(),
            Some(&fc.chains[i]),
            "incorrect fence reported"
        );

        assert!(
            find_seqno(&fc.chains[i], seqno + 1).is_err(),
            "error not reported for future fence: find_seqno({}:{})",
            seqno + 1,
            seqno
        );

        let found =
            find_seqno(&fc.chains[i], seqno - 1).expect("error reported for previous fence");
        if i > 0 {
            assert_eq!(
                found.as_ref(),
                Some(&fc.chains[i - 1]),
                "incorrect fence reported by find_seqno({}:{})",
                seqno - 1,
                seqno
            );
        }
    }
}

#[test]
fn test_find_signaled() {
    let fc = FenceChains::init(2, seqno_inc);
    fc.signal(0);
    let found = find_seqno(&fc.tail, 1).expect("reported error for finding a signalled point");
    assert!(
        found.is_none() || found.as_ref() == Some(&fc.chains[0]),
        "incorrect chain-fence.seqno:{:?} reported for completed seqno:1",
        found.map(|f| f.seqno())
    );
}

#[test]
fn test_find_out_of_order() {
    let fc = FenceChains::init(3, seqno_inc);
    fc.signal(1);
    let found = find_seqno(&fc.tail, 2).expect("reported error for finding point 2");
    // Point 2 is reached once payloads 0 and 1 have signalled. Payload 1
    // has, payload 0 has not: the node to wait on is chains[0], and node 1
    // was unlinked on the way.
    assert_eq!(
        found.as_ref(),
        Some(&fc.chains[0]),
        "incorrect chain-fence.seqno:{:?} reported for completed seqno:2",
        found.as_ref().map(Fence::seqno)
    );
}

#[test]
fn test_find_gap() {
    let fc = FenceChains::init(64, seqno_inc2);
    for i in 0..fc.len() {
        let found = find_seqno(&fc.tail, 2 * i as u64 + 1).expect("reported error finding a gap");
        assert_eq!(
            found.as_ref(),
            Some(&fc.chains[i]),
            "incorrect fence.seqno:{:?} reported for gap {}",
            found.as_ref().map(Fence::seqno),
            2 * i + 1
        );
        let found = find_seqno(&fc.chains[i], 2 * i as u64 + 2).expect("error finding self");
        assert_eq!(
            found.as_ref(),
            Some(&fc.chains[i]),
            "incorrect fence reported"
        );
    }
}

/// How long `test_find_race` runs. The kernel runs it for up to 5 s with a
/// thread per CPU; 1 s keeps this crate's suite quick in the dev profile
/// while still doing tens of thousands of racing lookups and unlinks.
const FIND_RACE_DURATION: Duration = Duration::from_secs(1);

#[test]
fn test_find_race() {
    let fc = Arc::new(FenceChains::init(CHAIN_SZ, seqno_inc));
    let stop = Arc::new(AtomicBool::new(false));
    // One thread per CPU as in the kernel, at least two so the race exists.
    let ncpus = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let threads: Vec<_> = (0..ncpus)
        .map(|id| {
            let fc = fc.clone();
            let stop = stop.clone();
            thread::spawn(move || -> Result<u64, String> {
                let mut rng = rand_pcg::Pcg64::seed_from_u64(0x5eed + id as u64);
                let len = fc.len();
                let mut cycles = 0;
                while !stop.load(Ordering::Relaxed) {
                    let seqno = rng.gen_range(1..=len as u64);
                    let found = find_seqno(&fc.tail, seqno)
                        .map_err(|e| format!("failed to find fence seqno:{seqno}: {e}"))?;
                    if let Some(f) = found
                        && f.seqno() == seqno
                    {
                        find_seqno(&f, seqno).map_err(|e| {
                            format!("reported an invalid fence for find-self:{seqno}: {e}")
                        })?;
                    }
                    fc.signal(rng.gen_range(0..len - 1));
                    cycles += 1;
                }
                Ok(cycles)
            })
        })
        .collect();
    thread::sleep(FIND_RACE_DURATION);
    stop.store(true, Ordering::Relaxed);
    let mut cycles = 0;
    for t in threads {
        match t.join().expect("find_race thread panicked") {
            Ok(n) => cycles += n,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(cycles > 0);
    // Whatever was signalled, every node now reports exactly what its
    // payloads say.
    for i in 0..fc.len() {
        let all = fc.fences[..=i].iter().all(Fence::is_signaled);
        assert_eq!(fc.chains[i].is_signaled(), all, "node {i}");
    }
}

#[test]
fn test_signal_forward() {
    let fc = FenceChains::init(64, seqno_inc);
    for i in 0..fc.len() {
        fc.signal(i);
        assert!(fc.chains[i].is_signaled(), "chain[{i}] not signaled!");
        if i + 1 < fc.len() {
            assert!(!fc.chains[i + 1].is_signaled(), "chain[{i}] is signaled!");
        }
    }
}

#[test]
fn test_signal_backward() {
    let fc = FenceChains::init(64, seqno_inc);
    for i in (0..fc.len()).rev() {
        fc.signal(i);
        if i > 0 {
            assert!(!fc.chains[i].is_signaled(), "chain[{i}] is signaled!");
        }
    }
    for i in 0..fc.len() {
        assert!(fc.chains[i].is_signaled(), "chain[{i}] was not signaled!");
    }
}

/// The wait tests: a thread waits on the tail while the main thread
/// signals every fence in `order`.
fn wait_in_order(order: impl FnOnce(usize) -> Vec<usize>) {
    let fc = FenceChains::init(CHAIN_SZ, seqno_inc);
    let tail = fc.tail.clone();
    let waiter = thread::spawn(move || tail.wait(None));
    for i in order(fc.len()) {
        fc.signal(i);
    }
    assert_eq!(waiter.join().expect("waiter panicked"), Ok(()));
    assert!(fc.tail.is_signaled());
}

#[test]
fn test_wait_forward() {
    wait_in_order(|n| (0..n).collect());
}

#[test]
fn test_wait_backward() {
    wait_in_order(|n| (0..n).rev().collect());
}

#[test]
fn test_wait_random() {
    wait_in_order(|n| {
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(42));
        v
    });
}
