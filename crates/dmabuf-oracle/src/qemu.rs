//! One boot of the guest under `qemu-system-x86_64 -accel tcg` with a hard
//! time limit. The serial console goes to a file; qemu exits by itself when
//! the guest's `/init` reboots (`-no-reboot`), or is killed at the limit.
//!
//! | part | machine |
//! |---|---|
//! | `abi` | the default pc machine, 512 MiB, one CPU |
//! | `vfio`, `kmod` | q35 with `intel-iommu,intremap=on` and qemu's `edu` device (BAR0 1 MiB) behind a `pcie-root-port` (on the root bus it has no reset method); guest `intel_iommu=on` |

use crate::cases::Part;
use crate::serial::BootEnd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one boot produced.
#[derive(Debug)]
pub struct Boot {
    /// Everything qemu wrote (serial console and its own messages).
    pub log: String,
    /// How it ended.
    pub end: BootEnd,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

/// The qemu arguments for `part`.
pub fn args(part: Part, cache: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-smp",
        "1",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut cmdline = String::from("console=ttyS0 panic=-1 quiet loglevel=3");
    if part == Part::Vfio || part == Part::Kmod {
        a.extend(
            [
                "-machine",
                "q35",
                "-device",
                "intel-iommu,intremap=on",
                "-device",
                "pcie-root-port,id=rp0,chassis=1,slot=1",
                "-device",
                "edu,bus=rp0",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        cmdline.push_str(" intel_iommu=on");
    }
    cmdline.push_str(&format!(" oracle.part={}", part.name()));
    a.push("-kernel".into());
    a.push(cache.join("vmlinuz").display().to_string());
    a.push("-initrd".into());
    a.push(cache.join("initramfs.cpio.gz").display().to_string());
    a.push("-append".into());
    a.push(cmdline);
    a
}

/// Boots `part` and waits at most `limit`.
pub fn boot(part: Part, cache: &Path, limit: Duration) -> Result<Boot, String> {
    let log_path = cache.join(format!("serial-{}.log", part.name()));
    let out = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(args(part, cache))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting qemu-system-x86_64: {e}"))?;
    let end = loop {
        match child.try_wait() {
            Ok(Some(st)) => break BootEnd::Exited(st.code()),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break BootEnd::TimedOut {
                    secs: limit.as_secs(),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                let _ = child.kill();
                return Err(format!("waiting for qemu: {e}"));
            }
        }
    };
    let elapsed = start.elapsed();
    let bytes = std::fs::read(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    Ok(Boot {
        log: String::from_utf8_lossy(&bytes).into_owned(),
        end,
        elapsed,
    })
}
