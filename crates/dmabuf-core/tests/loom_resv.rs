//! loom model of the wait-die ww-mutex: two threads, two locks, opposite
//! orders, each with an acquire context and the kernel's backoff protocol.
//! Every interleaving (within the preemption bound) must finish, hold each
//! lock exclusively, and never make the older context die.
#![cfg(loom)]

use dmabuf_core::sync::Arc;
use dmabuf_core::sync::atomic::{AtomicUsize, Ordering};
use dmabuf_core::ww_mutex::{WwAcquireCtx, WwClass, WwError, WwMutex};

static CLASS: WwClass = WwClass::new("loom_ww_class");

fn transaction(locks: &[Arc<WwMutex>; 2], first: usize, inside: &AtomicUsize) -> (u64, u32) {
    let mut ctx = WwAcquireCtx::new(&CLASS);
    let order = [first, 1 - first];
    let mut deaths = 0;
    let mut held: Vec<usize> = Vec::new();
    let mut slow: Option<usize> = None;
    'retry: loop {
        if let Some(i) = slow.take() {
            locks[i].lock_slow(&mut ctx).unwrap();
            held.push(i);
        }
        for &i in &order {
            if held.contains(&i) {
                continue;
            }
            match locks[i].lock(Some(&mut ctx)) {
                Ok(()) => held.push(i),
                Err(WwError::Deadlock { stamp, older }) => {
                    assert!(older < stamp);
                    deaths += 1;
                    for &h in held.iter().rev() {
                        locks[h].unlock().unwrap();
                    }
                    held.clear();
                    slow = Some(i);
                    continue 'retry;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        break;
    }
    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "both inside");
    inside.fetch_sub(1, Ordering::SeqCst);
    for &h in &held {
        locks[h].unlock().unwrap();
    }
    let stamp = ctx.stamp();
    ctx.fini().unwrap();
    (stamp, deaths)
}

#[test]
fn two_contexts_opposite_orders_always_complete() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let locks = Arc::new([
            Arc::new(WwMutex::new(&CLASS)),
            Arc::new(WwMutex::new(&CLASS)),
        ]);
        let inside = Arc::new(AtomicUsize::new(0));
        let (l2, i2) = (locks.clone(), inside.clone());
        let t = loom::thread::spawn(move || transaction(&l2, 1, &i2));
        let a = transaction(&locks, 0, &inside);
        let b = t.join().unwrap();
        let (older, younger) = if a.0 < b.0 { (a, b) } else { (b, a) };
        assert_eq!(older.1, 0, "the older context died");
        let _ = younger;
        assert!(!locks[0].is_locked() && !locks[1].is_locked());
    });
}
