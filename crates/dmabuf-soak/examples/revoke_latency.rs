//! Revoke latency against the number of attachments: one VFIO buffer
//! (v6-final), N `rdma-odp` memory regions on one NIC, every region mapped
//! (a DMA job each) before every FLR. Prints p50/p99/max per N and the
//! ratio of each p50 to the 1-attachment p50 measured in the same run.
//!
//! `cargo run --release -p dmabuf-soak --example revoke_latency [ROUNDS]`
//! (default 30 rounds per size; sizes 1, 100, 1000).

use dmabuf_core::revoke::Protocol;
use dmabuf_core::sync::Arc;
use dmabuf_core::uapi::Process;
use dmabuf_drivers::host::Host;
use dmabuf_drivers::importers::Importer;
use dmabuf_drivers::importers::nic::Nic;
use dmabuf_drivers::importers::rdma::{MrFlavour, RdmaImporter};
use dmabuf_drivers::vfio::{ResetKind, VfioPciDevice};
use dmabuf_drivers::vfio_uapi::DmaRange;
use dmabuf_platform::{DeviceConfig, PAGE_SIZE, Platform, PlatformConfig};
use std::process::ExitCode;
use std::time::Duration;

fn measure(n: usize, rounds: usize) -> Result<Vec<u64>, String> {
    let mut cfg = PlatformConfig::default()
        .switch("sw0")
        .ram_frames(64)
        .device(
            DeviceConfig::new("vfio0")
                .bar(0, 0x10000)
                .behind_switch("sw0"),
        )
        .device(DeviceConfig::new("nic0").behind_switch("sw0"));
    cfg.flr_delay = Duration::from_micros(50);
    let p = Platform::new(cfg).map_err(|e| e.to_string())?;
    let host = Host::new(p.clone());
    let dev = host.device_by_name("vfio0").ok_or("no vfio0")?;
    let v =
        VfioPciDevice::bind(&host, dev, Arc::new(Protocol::merged())).map_err(|e| e.to_string())?;
    let nic = Nic::new(&host, host.device_by_name("nic0").ok_or("no nic0")?)
        .map_err(|e| e.to_string())?;
    let vmm = Process::new(1);
    let fd = v
        .export_dma_buf(
            &vmm,
            0,
            &[DmaRange {
                offset: 0,
                length: 2 * PAGE_SIZE,
            }],
            2,
        )
        .map_err(|e| e.to_string())?;
    let user = Process::new(2);
    let mut mrs = Vec::new();
    for i in 0..n {
        let ufd = vmm.send_fd(fd, &user).map_err(|e| e.to_string())?;
        let mr = RdmaImporter::new(&host, &format!("mr{i}"), MrFlavour::Odp, &nic, false);
        mr.setup(&user, ufd).map_err(|e| format!("mr{i}: {e}"))?;
        mrs.push(mr);
    }
    let mut lat = Vec::new();
    for _ in 0..rounds {
        // Fault every region in (ODP maps on the device's page fault).
        let jobs: Vec<_> = mrs
            .iter()
            .filter_map(|m| m.submit(0, 1, None).ok())
            .collect();
        for j in jobs {
            let _ = j.wait();
        }
        let r = v.reset(ResetKind::Flr).map_err(|e| e.to_string())?;
        let b = r.revoked.first().ok_or("the FLR revoked no buffer")?;
        if b.notified != n {
            return Err(format!("{} of {n} attachments notified", b.notified));
        }
        lat.push(b.returned_ns.saturating_sub(b.began_ns));
    }
    for m in &mrs {
        let _ = m.teardown();
    }
    let _ = v.close();
    nic.shutdown();
    p.shutdown();
    vmm.close_all();
    user.close_all();
    Ok(lat)
}

fn q(sorted: &[u64], f: f64) -> u64 {
    let i = ((f * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() -> ExitCode {
    let rounds = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 30,
        Some(Ok(r)) if (1..=100_000).contains(&r) => r,
        Some(_) => {
            eprintln!("revoke_latency: ROUNDS must be 1 to 100000");
            return ExitCode::from(2);
        }
    };
    println!(
        "revoke latency, v6-final, FLR of one VFIO buffer with N rdma-odp MRs mapped ({rounds} rounds each)"
    );
    println!("attachments  p50 us  p99 us  max us  p50 / p50(1 attachment)");
    let mut base = None;
    for n in [1usize, 100, 1000] {
        match measure(n, rounds) {
            Ok(mut l) => {
                l.sort_unstable();
                let (p50, p99, max) = (q(&l, 0.5), q(&l, 0.99), *l.last().unwrap_or(&0));
                let b = *base.get_or_insert(p50.max(1));
                println!(
                    "{n:>11}  {:>6.1}  {:>6.1}  {:>6.1}  {:.1}x",
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3,
                    max as f64 / 1e3,
                    p50 as f64 / b as f64
                );
            }
            Err(e) => {
                eprintln!("revoke_latency: {n} attachments: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
