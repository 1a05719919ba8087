//! Tests of the userspace ABI: every ioctl's success path and errnos, poll
//! readiness per usage, fd passing and reference counts, and a fuzzer.

use crate::dma_buf::{self, DmaBuf, PAGE_SIZE};
use crate::dma_buf_tests::{MockExp, export_mock};
use crate::dma_fence::{Fence, FenceContext, SignalHandle};
use crate::dma_resv::Usage;
use crate::errno;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicU32, Ordering};
use crate::sync_file::SyncFile;
use crate::uapi::*;

fn proc_with_buf() -> (Arc<Process>, i32, DmaBuf, Arc<MockExp>) {
    let p = Process::new(100);
    let (b, ops) = export_mock(MockExp {
        mmap: true,
        ..Default::default()
    });
    let keep = b.clone();
    let fd = p.dma_buf_fd(b, O_CLOEXEC).unwrap();
    (p, fd, keep, ops)
}

fn add(buf: &DmaBuf, usage: Usage) -> (Fence, SignalHandle) {
    let ctx = FenceContext::named("drv", "tl");
    let (f, h) = ctx.create();
    let g = buf.resv().lock(None).unwrap();
    g.reserve_fences(1).unwrap();
    g.add_fence(&f, usage).unwrap();
    (f, h)
}

fn sync_payload(flags: u64) -> Vec<u8> {
    flags.to_le_bytes().to_vec()
}

fn noop_wake() -> Arc<dyn Fn(u32) + Send + Sync> {
    Arc::new(|_| {})
}

#[test]
fn ioctl_numbers_match_the_uapi_header() {
    assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
    assert_eq!(DMA_BUF_SET_NAME_A, 0x4004_6201);
    assert_eq!(DMA_BUF_SET_NAME_B, 0x4008_6201);
    assert_eq!(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xC008_6202);
    assert_eq!(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
    assert_eq!(SYNC_IOC_MERGE, 0xC030_3E03);
    assert_eq!(SYNC_IOC_FILE_INFO, 0xC038_3E04);
    assert_eq!(SYNC_IOC_SET_DEADLINE, 0x4010_3E05);
}

#[test]
fn dma_buf_get_errors() {
    let (p, fd, _b, _) = proc_with_buf();
    assert!(p.dma_buf_get(fd).is_ok());
    assert_eq!(p.dma_buf_get(99).unwrap_err(), SysError(errno::EBADF));
    let other = p.install(File::Other("/dev/null".into()), false).unwrap();
    assert_eq!(p.dma_buf_get(other).unwrap_err(), SysError(errno::EINVAL));
    assert_eq!(
        p.ioctl(other, DMA_BUF_IOCTL_SYNC, 0).unwrap_err(),
        SysError(errno::ENOTTY)
    );
}

#[test]
fn unknown_command_is_enotty() {
    let (p, fd, _b, _) = proc_with_buf();
    let mut pl = vec![0u8; 8];
    assert_eq!(
        p.ioctl_buf(fd, 0x4008_6204, &mut pl).unwrap_err(),
        SysError(errno::ENOTTY)
    );
}

#[test]
fn sync_ioctl_success_and_errnos() {
    let (p, fd, _b, ops) = proc_with_buf();
    let mut pl = sync_payload(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW);
    assert_eq!(p.ioctl_buf(fd, DMA_BUF_IOCTL_SYNC, &mut pl), Ok(0));
    assert_eq!(ops.cpu_begin.load(Ordering::SeqCst), 1);
    let mut pl = sync_payload(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
    assert_eq!(p.ioctl_buf(fd, DMA_BUF_IOCTL_SYNC, &mut pl), Ok(0));
    // Bits outside the mask.
    let mut pl = sync_payload(DMA_BUF_SYNC_RW | 8);
    assert_eq!(
        p.ioctl_buf(fd, DMA_BUF_IOCTL_SYNC, &mut pl).unwrap_err(),
        SysError(errno::EINVAL)
    );
    // No direction.
    let mut pl = sync_payload(DMA_BUF_SYNC_END);
    assert_eq!(
        p.ioctl_buf(fd, DMA_BUF_IOCTL_SYNC, &mut pl).unwrap_err(),
        SysError(errno::EINVAL)
    );
    // Bad pointer.
    assert_eq!(
        p.ioctl(fd, DMA_BUF_IOCTL_SYNC, 0x10).unwrap_err(),
        SysError(errno::EFAULT)
    );
}

#[test]
fn set_name_a_and_b_success_and_errnos() {
    let (p, fd, b, _) = proc_with_buf();
    let s = p.user_alloc(b"scanout\0");
    assert_eq!(p.ioctl(fd, DMA_BUF_SET_NAME_A, s), Ok(0));
    assert_eq!(b.name().as_deref(), Some("scanout"));
    let s2 = p.user_alloc(b"cursor\0");
    assert_eq!(p.ioctl(fd, DMA_BUF_SET_NAME_B, s2), Ok(0));
    assert_eq!(b.name().as_deref(), Some("cursor"));
    let long = p.user_alloc(&[b'a'; 40]);
    assert_eq!(
        p.ioctl(fd, DMA_BUF_SET_NAME_B, long).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        p.ioctl(fd, DMA_BUF_SET_NAME_B, 8).unwrap_err(),
        SysError(errno::EFAULT)
    );
    assert_eq!(
        b.name().as_deref(),
        Some("cursor"),
        "a failed rename keeps the old name"
    );
    assert!(p.fdinfo(fd).unwrap().contains("name:\tcursor"));
}

fn export_sync_file(p: &Process, fd: i32, flags: u32) -> Result<i32, SysError> {
    let mut pl = [0u8; 8];
    pl[..4].copy_from_slice(&flags.to_le_bytes());
    p.ioctl_buf(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut pl)?;
    Ok(i32::from_le_bytes([pl[4], pl[5], pl[6], pl[7]]))
}

#[test]
fn export_sync_file_picks_usage_by_direction() {
    let (p, fd, b, _) = proc_with_buf();
    let (wf, wh) = add(&b, Usage::Write);
    let (rf, rh) = add(&b, Usage::Read);
    // READ only: wait for writers (Write usage).
    let sfd = export_sync_file(&p, fd, DMA_BUF_SYNC_READ as u32).unwrap();
    assert!(p.is_cloexec(sfd).unwrap());
    assert_eq!(p.sync_file_get_fence(sfd).unwrap(), wf);
    // WRITE: wait for readers and writers (Read usage): an array of both.
    let sfd2 = export_sync_file(&p, fd, DMA_BUF_SYNC_WRITE as u32).unwrap();
    let f2 = p.sync_file_get_fence(sfd2).unwrap();
    assert_ne!(f2, wf);
    assert!(!f2.is_signaled());
    wh.signal().unwrap();
    rh.signal().unwrap();
    assert!(f2.is_signaled() || f2.wait_timeout(None, 1_000_000_000).unwrap() > 0);
    drop(rf);
    // No fences: the signalled stub.
    let sfd3 = export_sync_file(&p, fd, DMA_BUF_SYNC_RW as u32).unwrap();
    assert!(p.sync_file_get_fence(sfd3).unwrap().is_signaled());
}

#[test]
fn export_sync_file_errnos() {
    let (p, fd, _b, _) = proc_with_buf();
    assert_eq!(
        export_sync_file(&p, fd, 0).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        export_sync_file(&p, fd, 4).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        p.ioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0).unwrap_err(),
        SysError(errno::EFAULT)
    );
    let before = p.fds().len();
    assert!(export_sync_file(&p, fd, 1 | 8).is_err());
    assert_eq!(p.fds().len(), before, "a failed export leaves no fd behind");
}

fn import_sync_file(p: &Process, fd: i32, flags: u32, sfd: i32) -> Result<i64, SysError> {
    let mut pl = [0u8; 8];
    pl[..4].copy_from_slice(&flags.to_le_bytes());
    pl[4..].copy_from_slice(&sfd.to_le_bytes());
    p.ioctl_buf(fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &mut pl)
}

#[test]
fn import_sync_file_adds_with_usage_and_errnos() {
    let (p, fd, b, _) = proc_with_buf();
    let ctx = FenceContext::named("drv", "ext");
    let (f, h) = ctx.create();
    let sfd = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f.clone()))), true)
        .unwrap();
    assert_eq!(
        import_sync_file(&p, fd, DMA_BUF_SYNC_WRITE as u32, sfd),
        Ok(0)
    );
    assert_eq!(b.resv().get_fences(Usage::Write), vec![f.clone()]);
    assert!(b.resv().get_fences(Usage::Kernel).is_empty());
    assert_eq!(
        import_sync_file(&p, fd, 0, sfd).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        import_sync_file(&p, fd, 8 | 1, sfd).unwrap_err(),
        SysError(errno::EINVAL)
    );
    // Not a sync_file.
    assert_eq!(
        import_sync_file(&p, fd, 1, fd).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        p.ioctl(fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 3).unwrap_err(),
        SysError(errno::EFAULT)
    );
    h.signal().unwrap();
}

fn merge(p: &Process, a: i32, b: i32, name: &str, flags: u32) -> Result<i32, SysError> {
    let mut pl = [0u8; 48];
    pl[..name.len()].copy_from_slice(name.as_bytes());
    pl[32..36].copy_from_slice(&b.to_le_bytes());
    pl[40..44].copy_from_slice(&flags.to_le_bytes());
    p.ioctl_buf(a, SYNC_IOC_MERGE, &mut pl)?;
    Ok(i32::from_le_bytes([pl[36], pl[37], pl[38], pl[39]]))
}

#[test]
fn sync_merge_success_and_errnos() {
    let p = Process::new(1);
    let (f1, h1) = FenceContext::named("d", "a").create();
    let (f2, h2) = FenceContext::named("d", "b").create();
    let a = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f1))), true)
        .unwrap();
    let b = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f2))), true)
        .unwrap();
    let m = merge(&p, a, b, "merged", 0).unwrap();
    assert!(p.is_cloexec(m).unwrap());
    let mf = p.sync_file_get_fence(m).unwrap();
    h1.signal().unwrap();
    h2.signal().unwrap();
    assert!(mf.is_signaled());
    assert_eq!(
        merge(&p, a, b, "x", 1).unwrap_err(),
        SysError(errno::EINVAL)
    );
    let other = p.install(File::Other("x".into()), false).unwrap();
    assert_eq!(
        merge(&p, a, other, "x", 0).unwrap_err(),
        SysError(errno::ENOENT)
    );
    assert_eq!(
        p.ioctl(a, SYNC_IOC_MERGE, 4).unwrap_err(),
        SysError(errno::EFAULT)
    );
}

fn file_info(p: &Process, fd: i32, num: u32, ptr: u64, flags: u32) -> Result<[u8; 56], SysError> {
    let mut pl = [0u8; 56];
    pl[36..40].copy_from_slice(&flags.to_le_bytes());
    pl[40..44].copy_from_slice(&num.to_le_bytes());
    pl[48..56].copy_from_slice(&ptr.to_le_bytes());
    p.ioctl_buf(fd, SYNC_IOC_FILE_INFO, &mut pl)?;
    Ok(pl)
}

#[test]
fn sync_file_info_two_call_protocol() {
    let p = Process::new(1);
    let (f, h) = FenceContext::named("drv", "tl").create();
    let sfd = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f))), true)
        .unwrap();
    // First call: num_fences = 0 asks for the count and the status.
    let info = file_info(&p, sfd, 0, 0, 0).unwrap();
    let n = u32::from_le_bytes(info[40..44].try_into().unwrap());
    assert_eq!(n, 1);
    assert_eq!(i32::from_le_bytes(info[32..36].try_into().unwrap()), 0);
    h.signal().unwrap();
    // Second call with room for n entries.
    let arr = p.user_alloc(&vec![0u8; SYNC_FENCE_INFO_SIZE * n as usize]);
    let info = file_info(&p, sfd, n, arr, 0).unwrap();
    assert_eq!(i32::from_le_bytes(info[32..36].try_into().unwrap()), 1);
    let e = p.user_read(arr, SYNC_FENCE_INFO_SIZE).unwrap();
    assert_eq!(i32::from_le_bytes(e[64..68].try_into().unwrap()), 1);
    assert_ne!(
        u64::from_le_bytes(e[72..80].try_into().unwrap()),
        0,
        "timestamp of a signalled fence"
    );
    // Errnos.
    assert_eq!(
        file_info(&p, sfd, 0, 0, 1).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        file_info(&p, sfd, 1, 0x20, 0).unwrap_err(),
        SysError(errno::EFAULT)
    );
    assert_eq!(
        p.ioctl(sfd, SYNC_IOC_FILE_INFO, 0x20).unwrap_err(),
        SysError(errno::EFAULT)
    );
}

#[test]
fn sync_set_deadline_success_and_errnos() {
    let p = Process::new(1);
    let (f, _h) = FenceContext::named("drv", "tl").create();
    let sfd = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f))), true)
        .unwrap();
    let mut pl = [0u8; 16];
    pl[..8].copy_from_slice(&123u64.to_le_bytes());
    assert_eq!(p.ioctl_buf(sfd, SYNC_IOC_SET_DEADLINE, &mut pl), Ok(0));
    pl[8] = 1;
    assert_eq!(
        p.ioctl_buf(sfd, SYNC_IOC_SET_DEADLINE, &mut pl)
            .unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        p.ioctl(sfd, SYNC_IOC_SET_DEADLINE, 0).unwrap_err(),
        SysError(errno::EFAULT)
    );
    assert_eq!(
        p.ioctl(sfd, DMA_BUF_IOCTL_SYNC, 0).unwrap_err(),
        SysError(errno::ENOTTY)
    );
}

#[test]
fn llseek_rules() {
    let (p, fd, _b, _) = proc_with_buf();
    assert_eq!(p.lseek(fd, 0, SEEK_END), Ok(16 * PAGE_SIZE));
    assert_eq!(p.lseek(fd, 0, SEEK_SET), Ok(0));
    assert_eq!(
        p.lseek(fd, 1, SEEK_SET).unwrap_err(),
        SysError(errno::EINVAL)
    );
    assert_eq!(
        p.lseek(fd, 0, SEEK_CUR).unwrap_err(),
        SysError(errno::EINVAL)
    );
    let other = p.install(File::Other("x".into()), false).unwrap();
    assert_eq!(
        p.lseek(other, 0, SEEK_END).unwrap_err(),
        SysError(errno::EBADF)
    );
}

#[test]
fn dmabuffs_dname_is_dmabuf_colon_name() {
    let (p, fd, b, _) = proc_with_buf();
    assert_eq!(p.fd_path(fd).unwrap(), "/dmabuf:");
    dma_buf::set_name(&b, "fb0").unwrap();
    assert_eq!(p.fd_path(fd).unwrap(), "/dmabuf:fb0");
    let sf = p
        .install(
            File::SyncFile(Arc::new(SyncFile::create(Fence::stub()))),
            true,
        )
        .unwrap();
    assert_eq!(p.fd_path(sf).unwrap(), "anon_inode:sync_file");
    assert_eq!(p.fd_path(99), Err(SysError(errno::EBADF)));
}

#[test]
fn vfs_llseek_of_a_sync_file_is_espipe() {
    let p = Process::new(101);
    let sf = p
        .install(
            File::SyncFile(Arc::new(SyncFile::create(Fence::stub()))),
            true,
        )
        .unwrap();
    assert_eq!(p.lseek(sf, 0, SEEK_SET), Err(SysError(errno::ESPIPE)));
}

#[test]
fn vfs_read_write_and_ksys_pread64_on_pseudo_files() {
    let (p, fd, _b, _) = proc_with_buf();
    let sf = p
        .install(
            File::SyncFile(Arc::new(SyncFile::create(Fence::stub()))),
            true,
        )
        .unwrap();
    for f in [fd, sf] {
        assert_eq!(p.read(f, 16), Err(SysError(errno::EINVAL)));
        assert_eq!(p.write(f, &[0; 16]), Err(SysError(errno::EINVAL)));
        assert_eq!(p.pread(f, 16, 0), Err(SysError(errno::ESPIPE)));
        assert_eq!(p.pwrite(f, &[0; 16], 0), Err(SysError(errno::ESPIPE)));
    }
    assert_eq!(p.read(99, 1), Err(SysError(errno::EBADF)));
}

#[test]
fn mmap_on_fd_checks_range() {
    let (p, fd, _b, _) = proc_with_buf();
    assert_eq!(p.mmap(fd, 0, 16), Ok(()));
    assert_eq!(p.mmap(fd, 15, 2).unwrap_err(), SysError(errno::EINVAL));
}

#[test]
fn poll_in_ignores_read_and_bookkeep_fences() {
    let (p, fd, b, _) = proc_with_buf();
    let (_rf, rh) = add(&b, Usage::Read);
    let (_bf, bh) = add(&b, Usage::Bookkeep);
    assert_eq!(p.poll(fd, EPOLLIN, noop_wake()).unwrap(), EPOLLIN);
    assert_eq!(
        p.poll(fd, EPOLLOUT, noop_wake()).unwrap(),
        0,
        "a Read fence blocks EPOLLOUT"
    );
    rh.signal().unwrap();
    assert_eq!(
        p.poll(fd, EPOLLOUT, noop_wake()).unwrap(),
        EPOLLOUT,
        "Bookkeep is never considered"
    );
    bh.signal().unwrap();
}

#[test]
fn poll_kernel_and_write_fences_block_both_and_wake_once() {
    for usage in [Usage::Kernel, Usage::Write] {
        let (p, fd, b, _) = proc_with_buf();
        let (_f, h) = add(&b, usage);
        let woke = Arc::new(AtomicU32::new(0));
        let w2 = woke.clone();
        let wake: Arc<dyn Fn(u32) + Send + Sync> = Arc::new(move |ev| {
            w2.fetch_or(ev, Ordering::SeqCst);
        });
        assert_eq!(p.poll(fd, EPOLLIN | EPOLLOUT, wake.clone()).unwrap(), 0);
        // While the callback is armed the direction reports not ready.
        assert_eq!(p.poll(fd, EPOLLIN, wake).unwrap(), 0);
        // The armed callbacks hold file references.
        assert!(b.file_count() >= 4);
        h.signal().unwrap();
        assert_eq!(woke.load(Ordering::SeqCst), EPOLLIN | EPOLLOUT);
        assert_eq!(
            p.poll(fd, EPOLLIN | EPOLLOUT, noop_wake()).unwrap(),
            EPOLLIN | EPOLLOUT
        );
    }
}

#[test]
fn sync_file_poll_is_epollin_once_signalled() {
    let p = Process::new(1);
    let (f, h) = FenceContext::named("drv", "tl").create();
    let sfd = p
        .install(File::SyncFile(Arc::new(SyncFile::create(f))), true)
        .unwrap();
    assert_eq!(p.poll(sfd, EPOLLIN, noop_wake()).unwrap(), 0);
    h.signal().unwrap();
    assert_eq!(p.poll(sfd, EPOLLIN, noop_wake()).unwrap(), EPOLLIN);
}

#[test]
fn fd_passing_takes_references_and_release_runs_after_last_close() {
    let a = Process::new(1);
    let b = Process::new(2);
    let (buf, ops) = export_mock(MockExp::default());
    let r = buf.downgrade();
    let fd = a.dma_buf_fd(buf, 0).unwrap();
    assert_eq!(r.file_count(), 1);
    let fd_b = a.send_fd(fd, &b).unwrap();
    assert_eq!(r.file_count(), 2);
    // fdinfo holds its own reference while it prints, which the kernel's
    // "file_count - 1" discounts: two fds open shows 2.
    assert!(b.fdinfo(fd_b).unwrap().contains("count:\t2"));
    a.close(fd).unwrap();
    assert_eq!(ops.releases.load(Ordering::SeqCst), 0);
    assert_eq!(a.close(fd).unwrap_err(), SysError(errno::EBADF));
    b.close(fd_b).unwrap();
    assert_eq!(ops.releases.load(Ordering::SeqCst), 1);
    assert!(r.is_released());
}

#[test]
fn fds_take_the_lowest_free_number_and_emfile() {
    let p = Process::new(1);
    for i in 0..3 {
        assert_eq!(p.install(File::Other("x".into()), false).unwrap(), i);
    }
    p.close(1).unwrap();
    assert_eq!(p.install(File::Other("x".into()), false).unwrap(), 1);
    for _ in 3..MAX_FDS {
        p.install(File::Other("x".into()), false).unwrap();
    }
    assert_eq!(
        p.install(File::Other("x".into()), false).unwrap_err(),
        SysError(errno::EMFILE)
    );
}

#[test]
fn seq_show_prints_f_flags_in_octal_with_the_fd_close_on_exec() {
    // fs/proc/fd.c seq_show: "flags:\t0%o", f_flags | O_CLOEXEC if the fd has it.
    let (p, fd, b, _) = proc_with_buf();
    let want = format!("flags:\t0{:o}\n", b.flags() | O_CLOEXEC);
    assert!(
        p.fdinfo(fd).unwrap().contains(&want),
        "{}",
        p.fdinfo(fd).unwrap()
    );
    let plain = p.install(File::DmaBuf(b.clone()), false).unwrap();
    let want = format!("flags:\t0{:o}\n", b.flags());
    assert!(p.fdinfo(plain).unwrap().contains(&want));
    let sf = p
        .install(
            File::SyncFile(Arc::new(SyncFile::create(Fence::stub()))),
            true,
        )
        .unwrap();
    assert!(p.fdinfo(sf).unwrap().contains("flags:\t02000000\n"));
}

#[test]
fn fdinfo_and_bufinfo_formats() {
    let (p, fd, b, _) = proc_with_buf();
    dma_buf::set_name(&b, "fb0").unwrap();
    let _a = dma_buf::attach(&b, "display0").unwrap();
    let info = p.fdinfo(fd).unwrap();
    assert!(info.contains(&format!("ino:\t{}\n", b.ino())));
    assert!(info.contains(&format!("size:\t{}\n", 16 * PAGE_SIZE)));
    assert!(info.contains("exp_name:\tmock\n"));
    let all = dma_buf::bufinfo();
    assert!(all.contains("\tAttached Devices:\n\tdisplay0\n"), "{all}");
    assert!(all.contains("Total 1 devices attached"));
    assert!(all.contains("fb0"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const CMDS: [u32; 9] = [
        DMA_BUF_IOCTL_SYNC,
        DMA_BUF_SET_NAME_A,
        DMA_BUF_SET_NAME_B,
        DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
        DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
        SYNC_IOC_MERGE,
        SYNC_IOC_FILE_INFO,
        SYNC_IOC_SET_DEADLINE,
        0,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn ioctl_never_panics_and_errnos_are_possible(
            pick in 0usize..CMDS.len() + 1,
            raw in any::<u32>(),
            on_sync_file in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..96),
            use_ptr in any::<bool>(),
        ) {
            let (p, fd, b, _) = proc_with_buf();
            let (f, _h) = FenceContext::named("fz", "fz").create();
            let sfd = p.install(File::SyncFile(Arc::new(SyncFile::create(f))), true).unwrap();
            let cmd = if pick < CMDS.len() { CMDS[pick] } else { raw };
            let target = if on_sync_file { sfd } else { fd };
            let r = if use_ptr {
                let mut pl = payload.clone();
                p.ioctl_buf(target, cmd, &mut pl)
            } else {
                p.ioctl(target, cmd, u64::from(raw))
            };
            if let Err(SysError(e)) = r {
                let known = [DMA_BUF_IOCTL_SYNC, DMA_BUF_SET_NAME_A, DMA_BUF_SET_NAME_B,
                    DMA_BUF_IOCTL_EXPORT_SYNC_FILE, DMA_BUF_IOCTL_IMPORT_SYNC_FILE];
                let sync_known = [SYNC_IOC_MERGE, SYNC_IOC_FILE_INFO, SYNC_IOC_SET_DEADLINE];
                let applies = if on_sync_file { sync_known.contains(&cmd) } else { known.contains(&cmd) };
                let allowed: &[errno::Errno] = if applies { possible_errnos(cmd) } else { &[errno::ENOTTY] };
                prop_assert!(allowed.contains(&e), "cmd {cmd:#x} returned {e} which it cannot return");
            }
            // The objects stay usable.
            prop_assert_eq!(p.lseek(fd, 0, SEEK_END), Ok(b.size()));
        }
    }
}

/// Linux 7.2 `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` on an idle buffer: one
/// signalled fence whose `SYNC_IOC_FILE_INFO` reports driver
/// `detached-driver` and timeline `signaled-timeline`, and whose sync_file
/// name (`detached-driver-signaled-timeline0-0`, 36 bytes) is cut to 31.
#[test]
fn export_sync_file_idle_reports_detached_driver_and_cut_name() {
    let (p, fd, _b, _) = proc_with_buf();
    let sfd = export_sync_file(&p, fd, DMA_BUF_SYNC_RW as u32).unwrap();
    let File::SyncFile(sf) = p.get_file(sfd).unwrap() else {
        panic!("EXPORT_SYNC_FILE installed no sync_file");
    };
    let info = sf.info();
    assert_eq!(info.fences.len(), 1);
    assert_eq!(info.fences[0].driver_name, "detached-driver");
    assert_eq!(info.fences[0].obj_name, "signaled-timeline");
    assert_eq!(info.fences[0].status, 1);
    assert_eq!(info.name, "detached-driver-signaled-timeli");
    assert_eq!(info.name.len(), crate::sync_file::SYNC_NAME_MAX);
    // The same through the ABI: the 32-byte name field holds 31 bytes + NUL.
    let out = file_info(&p, sfd, 0, 0, 0).unwrap();
    assert_eq!(&out[..31], b"detached-driver-signaled-timeli");
    assert_eq!(out[31], 0);
}

/// `DMA_BUF_SET_NAME` copies the name with `strndup_user` and never asks
/// for UTF-8: any bytes but NUL are a name.
#[test]
fn dma_buf_set_name_takes_any_bytes_not_only_utf8() {
    let (p, fd, b, _) = proc_with_buf();
    let raw = [0xffu8, 0xfe, b'x', 0x80, 0];
    let s = p.user_alloc(&raw);
    assert_eq!(p.ioctl(fd, DMA_BUF_SET_NAME_B, s), Ok(0));
    assert_eq!(b.name_bytes().as_deref(), Some(&raw[..4]));
    assert!(p.fdinfo(fd).unwrap().contains("name:\t"));
    // `dma_buf_show_fdinfo` prints the bytes as they are.
    let info = p.fdinfo_bytes(fd).unwrap();
    let want = b"name:\t\xff\xfex\x80\n";
    assert!(
        info.windows(want.len()).any(|w| w == want),
        "fdinfo: {}",
        String::from_utf8_lossy(&info)
    );
    // 31 arbitrary bytes still fit; 32 do not.
    let mut long = vec![0xc3u8; 31];
    long.push(0);
    let s = p.user_alloc(&long);
    assert_eq!(p.ioctl(fd, DMA_BUF_SET_NAME_A, s), Ok(0));
    assert_eq!(b.name_bytes().map(|n| n.len()), Some(31));
    let mut too_long = vec![0xc3u8; 32];
    too_long.push(0);
    let s = p.user_alloc(&too_long);
    assert_eq!(
        p.ioctl(fd, DMA_BUF_SET_NAME_A, s).unwrap_err(),
        SysError(errno::EINVAL)
    );
}

/// Linux 7.2: `mmap(PROT_EXEC)` of a dma-buf fd is `EPERM` (the dma-buf
/// filesystem is `noexec`, checked in `do_mmap` before the exporter); read
/// and read-write shared mappings still work.
#[test]
fn mmap_prot_exec_of_dma_buf_is_eperm() {
    let (p, fd, _b, _) = proc_with_buf();
    assert_eq!(
        p.mmap_prot(fd, 0, 1, PROT_READ | PROT_EXEC).unwrap_err(),
        SysError(errno::EPERM)
    );
    assert_eq!(
        p.mmap_prot(fd, 0, 1, PROT_EXEC).unwrap_err(),
        SysError(errno::EPERM)
    );
    assert_eq!(p.mmap_prot(fd, 0, 1, PROT_READ), Ok(()));
    assert_eq!(p.mmap_prot(fd, 0, 1, PROT_READ | PROT_WRITE), Ok(()));
}

/// `do_mmap` (mm/mmap.c) checks the file's access mode before the
/// filesystem's `noexec` and before the dma-buf core: a shared writable
/// mapping of a read-only dma-buf is `EACCES`, a write-only one cannot be
/// mapped at all (`EACCES`); the core then refuses private mappings and
/// ranges past the end with `EINVAL` (`dma_buf_mmap_internal`).
#[test]
fn do_mmap_checks_access_mode_then_noexec_then_dma_buf_mmap_internal() {
    let p = Process::new(101);
    for (acc, rw, ro, rx) in [
        (0u32, Err(errno::EACCES), Ok(()), Err(errno::EPERM)),
        (
            1,
            Err(errno::EACCES),
            Err(errno::EACCES),
            Err(errno::EACCES),
        ),
        (2, Ok(()), Ok(()), Err(errno::EPERM)),
    ] {
        let ops = Arc::new(MockExp {
            mmap: true,
            ..Default::default()
        });
        let b = crate::dma_buf::export(crate::dma_buf::ExportInfo {
            exp_name: "mock".into(),
            size: 4 * PAGE_SIZE,
            flags: acc,
            resv: None,
            ops,
        })
        .unwrap();
        let fd = p.dma_buf_fd(b, O_CLOEXEC).unwrap();
        let m = |prot, flags| p.mmap_flags(fd, 0, 4, prot, flags).map_err(|e| e.0);
        assert_eq!(m(PROT_READ | PROT_WRITE, MAP_SHARED), rw, "O_ACCMODE {acc}");
        assert_eq!(m(PROT_READ, MAP_SHARED), ro, "O_ACCMODE {acc}");
        // EACCES for the write-only file comes before EPERM.
        assert_eq!(m(PROT_READ | PROT_EXEC, MAP_SHARED), rx, "O_ACCMODE {acc}");
        if acc == 2 {
            assert_eq!(m(PROT_READ | PROT_WRITE, MAP_PRIVATE), Err(errno::EINVAL));
            assert_eq!(m(PROT_READ, MAP_SHARED | MAP_PRIVATE), Err(errno::EINVAL));
            assert_eq!(
                p.mmap_flags(fd, 4, 1, PROT_READ, MAP_SHARED)
                    .map_err(|e| e.0),
                Err(errno::EINVAL),
                "past the end"
            );
        }
        p.close(fd).unwrap();
    }
}

/// `SysError` formats any raw value, `i32::MIN` included, without
/// overflow: `Errno::new` makes it an errno first, never negative.
#[test]
fn sys_error_display_is_total() {
    assert_eq!(
        SysError(errno::Errno::new(i32::MIN)).to_string(),
        "EINVAL (22)"
    );
    assert_eq!(SysError(errno::EPERM).to_string(), "EPERM (1)");
    assert_eq!(
        SysError(errno::Errno::new(errno::EPERM.to_negative())).to_string(),
        "EPERM (1)"
    );
}
