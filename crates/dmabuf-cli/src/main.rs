//! `dmabuf`: the command-line front end.
//!
//! Subcommands grow with the project; today `fences` runs a short
//! demonstration of the fence core on real threads.

use clap::{Parser, Subcommand};
use dmabuf_core::sync::{Arc, thread};
use dmabuf_core::{FenceContext, MAX_SCHEDULE_TIMEOUT};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dmabuf",
    version,
    about = "Linux 7.1 dma-buf revoke, in userspace Rust"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Signal fences from one thread while others wait on them, and print
    /// what each side saw.
    Fences {
        /// Number of fences on the timeline.
        #[arg(long, default_value_t = 8)]
        count: u64,
        /// Number of waiting threads.
        #[arg(long, default_value_t = 2)]
        waiters: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fences { count, waiters } => fences_demo(count, waiters),
    }
}

fn fences_demo(count: u64, waiters: usize) -> ExitCode {
    let ctx = FenceContext::named("demo-gpu", "ring0");
    let (fences, handles): (Vec<_>, Vec<_>) = (0..count).map(|_| ctx.create()).unzip();
    let fences = Arc::new(fences);
    println!(
        "timeline {} (context {}): {} fences, {} waiters",
        "ring0",
        ctx.context(),
        count,
        waiters
    );
    let mut joins = Vec::new();
    for w in 0..waiters {
        let fences = fences.clone();
        joins.push(thread::spawn_named(format!("waiter{w}"), move || {
            let mut seen = Vec::new();
            for f in fences.iter() {
                let t0 = dmabuf_core::sync::time::now_ns();
                let r = f.wait_timeout(None, MAX_SCHEDULE_TIMEOUT);
                let waited = dmabuf_core::sync::time::now_ns() - t0;
                seen.push((f.seqno(), r.is_ok(), f.get_status(), waited));
            }
            seen
        }));
    }
    let signaller = thread::spawn_named("signaller".into(), move || {
        for (i, h) in handles.into_iter().enumerate() {
            // Every third fence fails, to show error propagation.
            let r = if i % 3 == 2 {
                h.signal_with_error(-dmabuf_core::errno::EIO)
            } else {
                h.signal()
            };
            if let Err(e) = r {
                eprintln!("signal failed: {e}");
            }
            thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    if signaller.join().is_err() {
        eprintln!("signaller panicked");
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    for (w, j) in joins.into_iter().enumerate() {
        match j.join() {
            Ok(seen) => {
                for (seqno, waited_ok, status, ns) in seen {
                    println!(
                        "waiter{w}: fence {}:{seqno} signalled (wait ok={waited_ok}) status={status} after {:.1} us",
                        ctx.context(),
                        ns as f64 / 1000.0
                    );
                    ok &= waited_ok;
                }
            }
            Err(_) => {
                eprintln!("waiter{w} panicked");
                ok = false;
            }
        }
    }
    for f in fences.iter() {
        println!("{}", f.describe());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
