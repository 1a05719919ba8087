//! A search split into parts covers what the whole search covers: on
//! programs whose Mazurkiewicz traces are known (every trace a different
//! outcome), the union of the parts' outcomes is the whole search's, every
//! part is exhaustive, and a planted bug is found by exactly the part that
//! owns its branch of the split node.

use super::super::tests::{Seen, conflicting, record};
use super::super::{Outcome, RunConfig, Strategy, run};
use super::{Dfs, Dpor, SearchShard};
use crate::atomic::{AtomicUsize, Ordering::SeqCst};
use crate::{Arc, thread};
use std::collections::BTreeSet;

/// One execution's records and whether it panicked.
type Observed = (Vec<(String, String)>, bool);

type Prog = dyn Fn(Seen) -> Box<dyn FnOnce() + Send>;

/// `main` spawns `a`, then `b`; each claims a slot by compare-exchange,
/// and `b` winning is the bug (about half the interleavings).
fn first_claim() -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    |seen| {
        Box::new(move || {
            let slot = Arc::new(AtomicUsize::new(0));
            for (name, id) in [("a", 1), ("b", 2)] {
                let (slot, seen) = (slot.clone(), seen.clone());
                thread::spawn(move || {
                    let won = slot.compare_exchange(0, id, SeqCst, SeqCst).is_ok();
                    record(&seen, name, won.to_string());
                    if won && name == "b" {
                        panic!("planted bug: b claimed first");
                    }
                });
            }
        })
    }
}

/// A single task: no decision at all.
fn alone() -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    |seen| Box::new(move || record(&seen, "main", "done".into()))
}

struct Part {
    outcomes: BTreeSet<Observed>,
    executions: u64,
    /// The first decisions (task ids) of the executions that panicked.
    buggy_firsts: BTreeSet<usize>,
    finished: bool,
}

/// Runs `s` to the end; `probe` says whether the execution just run is
/// not the part's own (then it is neither counted nor recorded).
fn search<S: Strategy>(s: &mut S, prog: &Prog, probe: impl Fn(&S) -> bool) -> Part {
    let cfg = RunConfig {
        max_steps: 10_000,
        ..RunConfig::default()
    };
    let mut p = Part {
        outcomes: BTreeSet::new(),
        executions: 0,
        buggy_firsts: BTreeSet::new(),
        finished: false,
    };
    for _ in 0..100_000 {
        if !s.next_execution() {
            p.finished = true;
            break;
        }
        let seen: Seen = Arc::default();
        let r = run(s, &cfg, prog(seen.clone()));
        assert_eq!(r.divergence, None);
        assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
        if probe(s) {
            continue;
        }
        p.executions += 1;
        let rec: Vec<(String, String)> = std::mem::take(&mut *seen.lock().unwrap())
            .into_iter()
            .collect();
        let bug = !r.panics.is_empty();
        if bug {
            p.buggy_firsts
                .insert(r.schedule.choices().first().copied().unwrap_or(0));
        }
        p.outcomes.insert((rec, bug));
    }
    p
}

/// The split node's choice a first decision is: in these programs `main`
/// (task 0) is running there, so the order [main, then ascending ids] is
/// ascending ids and the choice is the task id.
fn choice_of_first(task: usize) -> usize {
    task
}

/// Checks the parts of a split against the whole search; returns the
/// parts' executions in total. `buggy`: the branches of the first node
/// below which some execution reaches the bug (from DFS, which runs them
/// all). A part may find the bug below a branch the whole DPOR search
/// reached it through another (the reduction compares objects new to a
/// sleeper's segment conservatively, so a fully expanded first node can
/// run a trace twice), but only below a branch that has one.
fn check_parts(whole: &Part, parts: &[Part], n: usize, buggy: &BTreeSet<usize>, what: &str) -> u64 {
    let mut union = BTreeSet::new();
    for (k, p) in parts.iter().enumerate() {
        assert!(p.finished, "{what}: part {k}/{n} did not finish");
        union.extend(p.outcomes.iter().cloned());
        // A bug is found only below a choice the part owns.
        for &t in &p.buggy_firsts {
            assert_eq!(choice_of_first(t) % n, k, "{what}: part {k}/{n}");
        }
    }
    assert_eq!(union, whole.outcomes, "{what}: {n} parts");
    let found: BTreeSet<usize> = parts
        .iter()
        .flat_map(|p| p.buggy_firsts.iter().copied())
        .collect();
    assert!(found.is_subset(buggy), "{what}: {n} parts: {found:?}");
    assert_eq!(found.is_empty(), whole.buggy_firsts.is_empty(), "{what}");
    parts.iter().map(|p| p.executions).sum()
}

fn dpor_parts(prog: &Prog, n: usize) -> Vec<(Part, Dpor)> {
    (0..n)
        .map(|k| {
            let mut d = Dpor::new(1000).shard(SearchShard::new(k, n).unwrap());
            let p = search(&mut d, prog, Dpor::is_probe);
            assert!(d.bounds_hit().is_empty(), "part {k}/{n}");
            assert!(d.is_exhausted(), "part {k}/{n}");
            (p, d)
        })
        .collect()
}

fn dfs_parts(prog: &Prog, n: usize) -> Vec<(Part, Dfs)> {
    (0..n)
        .map(|k| {
            let mut d = Dfs::new(1000).shard(SearchShard::new(k, n).unwrap());
            let p = search(&mut d, prog, Dfs::is_probe);
            assert!(d.bounds_hit().is_empty(), "part {k}/{n}");
            assert!(d.is_exhausted(), "part {k}/{n}");
            (p, d)
        })
        .collect()
}

fn binomial(n: u64, k: u64) -> u64 {
    (1..=k).fold(1, |acc, i| acc * (n + 1 - i) / i)
}

#[test]
fn dpor_parts_cover_every_trace_of_two_conflicting_sequences() {
    for k in 1..=4usize {
        let prog = conflicting(k, false);
        let mut whole = Dpor::new(1000);
        let w = search(&mut whole, &prog, |_| false);
        let traces = binomial(2 * k as u64, k as u64);
        assert_eq!(w.outcomes.len() as u64, traces);
        for n in [2, 3, 4] {
            let parts = dpor_parts(&prog, n);
            let choices = parts[0].1.split_choices().unwrap();
            let (ps, ds): (Vec<Part>, Vec<Dpor>) = parts.into_iter().unzip();
            let total = check_parts(&w, &ps, n, &BTreeSet::new(), &format!("dpor k={k}"));
            assert!(total >= traces, "k={k} n={n}: {total} executions");
            // A part that owns no choice explores nothing.
            for (kk, (p, d)) in ps.iter().zip(&ds).enumerate() {
                assert_eq!(d.split_choices(), Some(choices));
                if kk >= choices {
                    assert_eq!(p.executions, 0, "part {kk}/{n} owns nothing");
                    assert_eq!(d.stats().probes, 1);
                } else {
                    assert!(p.executions > 0, "part {kk}/{n}");
                }
            }
        }
    }
}

#[test]
fn dpor_parts_find_a_planted_bug_in_the_parts_that_own_it() {
    // One trace in C(8, 4) = 70 (strict alternation), and a race of two
    // claims (b winning). Which branches of the split node lead to the bug
    // is what DFS, which runs every branch, finds; the parts that find it
    // are among their owners (a part's own executions are below its own
    // choices: `check_parts`), and some part finds it.
    for (what, prog) in [
        ("alternation", &conflicting(4, true) as &Prog),
        ("first claim", &first_claim()),
    ] {
        let mut whole = Dpor::new(1000);
        let w = search(&mut whole, prog, |_| false);
        assert!(!w.buggy_firsts.is_empty(), "{what}");
        if what == "alternation" {
            assert_eq!(w.outcomes.iter().filter(|o| o.1).count(), 1);
        }
        let buggy = search(&mut Dfs::new(1000), prog, |_| false).buggy_firsts;
        for n in [2, 3, 4] {
            let (ps, ds): (Vec<Part>, Vec<Dpor>) = dpor_parts(prog, n).into_iter().unzip();
            check_parts(&w, &ps, n, &buggy, what);
            let finders: BTreeSet<usize> =
                (0..n).filter(|&k| !ps[k].buggy_firsts.is_empty()).collect();
            let owners: BTreeSet<usize> = buggy.iter().map(|c| c % n).collect();
            assert!(!finders.is_empty(), "{what} n={n}");
            assert!(finders.is_subset(&owners), "{what} n={n}: {finders:?}");
            // The whole search's first choice is shard 0's, explored as
            // the whole search explores it: its bug is shard 0's too.
            if w.buggy_firsts.contains(&0) {
                assert!(finders.contains(&0), "{what} n={n}");
            }
            // Shard 1 learnt choice 0's first segment by one probe.
            assert_eq!(ds[1].stats().probes, 1, "{what} n={n}");
            assert_eq!(ds[0].stats().probes, 0, "{what} n={n}");
        }
    }
}

#[test]
fn dfs_parts_partition_the_whole_search() {
    for (what, prog) in [
        ("conflicting(3)", &conflicting(3, false) as &Prog),
        ("planted alternation", &conflicting(3, true)),
        ("first claim", &first_claim()),
    ] {
        let mut whole = Dfs::new(1000);
        let w = search(&mut whole, prog, |_| false);
        assert!(w.finished && whole.bounds_hit().is_empty());
        for n in [2, 3, 4] {
            let (ps, _): (Vec<Part>, Vec<Dfs>) = dfs_parts(prog, n).into_iter().unzip();
            let total = check_parts(&w, &ps, n, &w.buggy_firsts, what);
            let found: BTreeSet<usize> = ps.iter().flat_map(|p| p.buggy_firsts.clone()).collect();
            assert_eq!(found, w.buggy_firsts, "{what}: every buggy branch, once");
            // Each branch of the first node is in exactly one part.
            assert_eq!(total, w.executions, "{what}, n={n}");
        }
    }
}

#[test]
fn a_program_without_decisions_is_shard_zeros() {
    let prog = alone();
    for n in [2, 3] {
        let (ps, ds): (Vec<Part>, Vec<Dpor>) = dpor_parts(&prog, n).into_iter().unzip();
        assert_eq!(ps[0].executions, 1);
        for k in 1..n {
            assert_eq!(ps[k].executions, 0);
            assert_eq!(ds[k].split_choices(), Some(1));
        }
        let (ps, _): (Vec<Part>, Vec<Dfs>) = dfs_parts(&prog, n).into_iter().unzip();
        assert_eq!(ps.iter().map(|p| p.executions).collect::<Vec<_>>()[0], 1);
        assert!(ps[1..].iter().all(|p| p.executions == 0));
    }
}

#[test]
fn a_part_of_one_is_the_whole_search() {
    let prog = conflicting(3, false);
    let mut a = Dpor::new(1000);
    let wa = search(&mut a, &prog, |_| false);
    let mut b = Dpor::new(1000).shard(SearchShard::new(0, 1).unwrap());
    let wb = search(&mut b, &prog, Dpor::is_probe);
    assert_eq!(wa.executions, wb.executions);
    assert_eq!(wa.outcomes, wb.outcomes);
    assert_eq!(a.stats(), b.stats());
    assert_eq!(b.split_choices(), None);
}

/// A choice made before anything else runs, then a world whose shape
/// depends on it: two tasks race to claim a slot (alternative 0 or 1,
/// inside a [`before_split`] scope when `hold`); the winner's alternative
/// spawns 2 + alternative workers, held until the scope has closed, then
/// released at once, each swapping its number into one atomic and
/// recording what it got. The first decision after the choice has 3 + alt
/// runnable tasks (the root and the workers).
fn choice_then_world(hold: bool) -> impl Fn(Seen) -> Box<dyn FnOnce() + Send> {
    move |seen| {
        Box::new(move || {
            let go = Arc::new(crate::Monotone::new(false));
            let x = Arc::new(AtomicUsize::new(0));
            let workers = {
                let _scope = hold.then(crate::sched::before_split);
                let slot = Arc::new(AtomicUsize::new(usize::MAX));
                slot.store(usize::MAX, SeqCst);
                let racers: Vec<_> = (0..2)
                    .map(|i| {
                        let slot = slot.clone();
                        thread::spawn(move || {
                            let _ = slot.compare_exchange(usize::MAX, i, SeqCst, SeqCst);
                        })
                    })
                    .collect();
                for r in racers {
                    r.join().unwrap();
                }
                let alt = slot.load(SeqCst);
                record(&seen, "alt", alt.to_string());
                (0..2 + alt)
                    .map(|w| {
                        let (go, x, seen) = (go.clone(), x.clone(), seen.clone());
                        thread::spawn(move || {
                            go.wait_until(|g| *g, None);
                            let got = x.swap(w + 1, SeqCst);
                            record(&seen, &format!("w{w}"), got.to_string());
                        })
                    })
                    .collect::<Vec<_>>()
            };
            go.update(|g| *g = true);
            for w in workers {
                w.join().unwrap();
            }
        })
    }
}

#[test]
fn a_choice_before_the_split_gives_every_part_its_share_of_each_alternative() {
    let prog = choice_then_world(true);
    let mut whole = Dpor::new(1000);
    let w = search(&mut whole, &prog, |_| false);
    let alts = |p: &Part| -> BTreeSet<String> {
        p.outcomes
            .iter()
            .filter_map(|(o, _)| o.iter().find(|r| r.0 == "alt").map(|r| r.1.clone()))
            .collect()
    };
    assert_eq!(alts(&w).len(), 2);
    for n in [2, 3, 4] {
        let parts = dpor_parts(&prog, n);
        let mut union = BTreeSet::new();
        for (k, (p, _)) in parts.iter().enumerate() {
            union.extend(p.outcomes.iter().cloned());
            // The split node is the first decision after the choice (3 or
            // 4 choices), not the choice's own race: below 3 parts, every
            // part explores both alternatives; part 3 owns a choice only
            // below alternative 1, which it finds although its every run
            // below alternative 0 is a probe.
            match k {
                0..=2 => assert_eq!(alts(p).len(), 2, "part {k}/{n}"),
                _ => assert_eq!(alts(p), BTreeSet::from(["1".to_owned()]), "part {k}/{n}"),
            }
        }
        assert_eq!(union, w.outcomes, "{n} parts");
    }
    // Without the scope the split node is the first decision of the
    // choice itself (the root spawning the first racer): two choices, and
    // nothing for a third part.
    let prog = choice_then_world(false);
    let parts = dpor_parts(&prog, 3);
    assert_eq!(parts[2].1.split_choices(), Some(2));
    assert_eq!(parts[2].0.executions, 0);
    let union: BTreeSet<Observed> = parts.iter().flat_map(|p| p.0.outcomes.clone()).collect();
    assert_eq!(union, w.outcomes);
}
