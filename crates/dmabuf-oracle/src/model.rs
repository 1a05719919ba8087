//! The project's back end of the case list: every case of
//! [`crate::cases`] run against the userspace ABI layer
//! (`dmabuf_core::uapi::Process`, `sync_file`) and the exporters of
//! [`crate::exporters`], in the same order and with the same arguments as
//! the probe, producing the same observable extra.
//!
//! Where the kernel case needs a driver the project does not model, the
//! model uses a stand-in made only of core parts, and says so:
//!
//! | kernel | stand-in here | what is compared |
//! |---|---|---|
//! | udmabuf and vgem buffers (`exporter.*`) | a core dma-buf with an exporter that has no ops beyond the mandatory ones, named `udmabuf` / `drm` | the core's generic ioctl, seek, poll and sync_file paths, never the exporter's own answers |
//! | a vgem fence (`DRM_IOCTL_VGEM_FENCE_ATTACH`, unsignalled until `..._SIGNAL`) | a fence of a `NamedOps("vgem", "unbound")` context (the names of `drivers/gpu/drm/vgem/vgem_fence.c`), added as a Write fence to a stand-in `drm` buffer and exported with `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` | what the sync_file, resv and poll code make of an unsignalled foreign fence |
//!
//! Fence-context numbers in sync_file names are masked on both sides by
//! the comparison ([`crate::report::normalise`]).

use crate::exporters::{EDU_BAR0, Exporters, Vfio};
use crate::serial::Outcome;
use dmabuf_core::dma_buf::{
    self, Attachment, DmaBufError, DmaBufOps, DmaBufRef, DmaDirection, ExportInfo, SgTable,
};
use dmabuf_core::dma_fence::{FenceContext, SignalHandle};
use dmabuf_core::dma_resv::{ResvGuard, Usage};
use dmabuf_core::errno::{AsErrno, Errno};
use dmabuf_core::uapi::{
    self, File, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE, Process, SysError,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUF_SIZE: u64 = 16384;
const PAGE: u64 = 4096;
const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_NONBLOCK: u32 = 0o4000;
const O_APPEND: u32 = 0o2000;
const O_CLOEXEC: u32 = uapi::O_CLOEXEC;
const POLLIN: u32 = 0x1;
const POLLPRI: u32 = 0x2;
const POLLOUT: u32 = 0x4;

/// The errno names the probe prints (`ename` in probe.c).
pub fn errno_name(e: i32) -> String {
    let n = match e {
        0 => "0",
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        5 => "EIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        24 => "EMFILE",
        25 => "ENOTTY",
        29 => "ESPIPE",
        38 => "ENOSYS",
        75 => "EOVERFLOW",
        77 => "EBADFD",
        95 => "EOPNOTSUPP",
        110 => "ETIMEDOUT",
        6 => "ENXIO",
        107 => "ENOTCONN",
        _ => return format!("E{e}"),
    };
    n.to_owned()
}

/// Collects outcomes in the probe's order.
struct Out(BTreeMap<String, Outcome>);

impl Out {
    fn emit(&mut self, id: &str, ret: i64, errno: i32, extra: impl AsRef<[u8]>) {
        let extra = extra.as_ref();
        self.0.insert(
            id.to_owned(),
            Outcome::new(
                ret,
                &errno_name(errno),
                if extra.is_empty() { b"-" } else { extra },
            ),
        );
    }
    /// A call's result: its value, or -1 and its errno.
    fn call<T: Into<i64>>(&mut self, id: &str, r: Result<T, SysError>, extra: impl AsRef<[u8]>) {
        match r {
            Ok(v) => self.emit(id, v.into(), 0, extra),
            Err(e) => self.emit(id, -1, e.errno().get(), extra),
        }
    }
    fn call_errno<T>(&mut self, id: &str, r: Result<T, Errno>, extra: impl AsRef<[u8]>) {
        match r {
            Ok(_) => self.emit(id, 0, 0, extra),
            Err(e) => self.emit(id, -1, e.get(), extra),
        }
    }
}

/// A stand-in exporter: only the mandatory ops (see the module table).
struct StandIn;

impl DmaBufOps for StandIn {
    fn map_dma_buf(
        &self,
        _attach: &Attachment,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) -> Result<SgTable, DmaBufError> {
        Err(DmaBufError::errno(
            dmabuf_core::errno::ENODEV,
            "stand-in exporter maps nothing",
        ))
    }
    fn unmap_dma_buf(
        &self,
        _attach: &Attachment,
        _sgt: SgTable,
        _dir: DmaDirection,
        _guard: &ResvGuard<'_>,
    ) {
    }
    fn release(&self, _buf: &DmaBufRef) {}
}

fn stand_in(proc: &Process, exp_name: &str, fd_flags: u32) -> Result<i32, String> {
    let buf = dma_buf::export(ExportInfo {
        exp_name: exp_name.into(),
        size: BUF_SIZE,
        flags: fd_flags,
        resv: None,
        ops: Arc::new(StandIn),
    })
    .map_err(|e| format!("stand-in export: {e}"))?;
    proc.dma_buf_fd(buf, fd_flags)
        .map_err(|e| format!("stand-in fd: {e}"))
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn rd64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The model's fdinfo as `k=v,...` for `keys` (probe.c `fdinfo`).
/// The named fdinfo fields as `k=v,...`, in bytes: a name set by
/// userspace may be any bytes, and the kernel prints them as they are.
fn fdinfo(proc: &Process, fd: i32, keys: &[&str]) -> Vec<u8> {
    let text = match proc.fdinfo_bytes(fd) {
        Ok(t) => t,
        Err(e) => return format!("fdinfo={}", errno_name(e.errno().get())).into_bytes(),
    };
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let want = format!("{k}:\t");
        let v = text
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(want.as_bytes()))
            .unwrap_or(b"<none>");
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

fn fdinfo_keys(proc: &Process, fd: i32) -> String {
    let text = proc.fdinfo(fd).unwrap_or_default();
    text.lines()
        .map_while(|l| l.split_once(':').map(|(k, _)| k.to_owned()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `readlink("/proc/self/fd/N")` (probe.c `fdlink`).
fn fdlink(proc: &Process, fd: i32) -> String {
    match proc.fd_path(fd) {
        Ok(s) => s,
        Err(e) => format!("readlink={}", errno_name(e.errno().get())),
    }
}

const FD_KEYS: &[&str] = &["pos", "flags", "size", "count", "exp_name", "name"];

fn pollbits(proc: &Process, fd: i32, events: u32) -> String {
    match proc.poll(fd, events, Arc::new(|_| {})) {
        Ok(r) => format!(
            "rev={}{}{}",
            if r & POLLIN != 0 { "IN" } else { "" },
            if r & POLLOUT != 0 { "OUT" } else { "" },
            if r & POLLPRI != 0 { "PRI" } else { "" }
        ),
        Err(e) => format!("poll={}", errno_name(e.errno().get())),
    }
}

fn file_info(proc: &Process, fd: i32, num: u32, arr: u64) -> (Result<i64, SysError>, Vec<u8>) {
    let mut p = vec![0u8; 56];
    p[40..44].copy_from_slice(&le32(num));
    p[48..56].copy_from_slice(&arr.to_le_bytes());
    let r = proc.ioctl_buf(fd, uapi::SYNC_IOC_FILE_INFO, &mut p);
    (r, p)
}

/// probe.c `describe_sync`.
fn describe_sync(proc: &Process, fd: i32) -> String {
    let (r, info) = file_info(proc, fd, 0, 0);
    if let Err(e) = r {
        return format!("info={}", errno_name(e.errno().get()));
    }
    let n = rd32(&info, 40);
    let count = n.min(8);
    let arr = proc.user_alloc(&vec![0u8; 8 * 80]);
    let (r2, _) = file_info(proc, fd, count, arr);
    let fi = proc.user_read(arr, 8 * 80).unwrap_or_default();
    proc.user_free(arr);
    if count > 0
        && let Err(e) = r2
    {
        return format!("info2={}", errno_name(e.errno().get()));
    }
    let mut s = format!(
        "name={},status={},n={}",
        cstr(&info[..32]),
        rd32(&info, 32) as i32,
        n
    );
    for i in 0..count as usize {
        let o = i * 80;
        s.push_str(&format!(
            ",f{i}={}/{}/{}/{}",
            cstr(&fi[o + 32..o + 64]),
            cstr(&fi[o..o + 32]),
            rd32(&fi, o + 64) as i32,
            if rd64(&fi, o + 72) != 0 { "ts" } else { "nots" }
        ));
    }
    s
}

fn export_sync(proc: &Process, fd: i32, flags: u32) -> Result<i32, SysError> {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&le32(flags));
    p[4..].copy_from_slice(&(-1i32).to_le_bytes());
    proc.ioctl_buf(fd, uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut p)?;
    Ok(rd32(&p, 4) as i32)
}

fn import_sync(proc: &Process, fd: i32, flags: u32, sfd: i32) -> Result<i64, SysError> {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&le32(flags));
    p[4..].copy_from_slice(&sfd.to_le_bytes());
    proc.ioctl_buf(fd, uapi::DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &mut p)
}

fn sync(proc: &Process, fd: i32, flags: u64) -> Result<i64, SysError> {
    let mut p = flags.to_le_bytes();
    proc.ioctl_buf(fd, uapi::DMA_BUF_IOCTL_SYNC, &mut p)
}

fn set_name(proc: &Process, fd: i32, cmd: u32, name: &[u8]) -> Result<i64, SysError> {
    let mut s = name.to_vec();
    s.push(0);
    let a = proc.user_alloc(&s);
    let r = proc.ioctl(fd, cmd, a);
    proc.user_free(a);
    r
}

/// An unsignalled stand-in vgem fence as a sync_file (probe.c `vgem_unsig`).
struct Unsig {
    sync: i32,
    prime: i32,
    handle: SignalHandle,
}

/// Like `vgem_fence_attach`, every fence gets a context of its own
/// (`dma_fence_context_alloc(1)`) and seqno 1.
fn vgem_unsig(proc: &Process) -> Result<Unsig, String> {
    let prime = stand_in(proc, "drm", O_RDWR | O_CLOEXEC)?;
    let buf = proc.dma_buf_get(prime).map_err(|e| e.to_string())?;
    let (fence, handle) = FenceContext::named("vgem", "unbound").create_with_seqno(1);
    {
        let g = buf.resv().lock(None).map_err(|e| e.to_string())?;
        g.reserve_fences(1).map_err(|e| e.to_string())?;
        g.add_fence(&fence, Usage::Write)
            .map_err(|e| e.to_string())?;
    }
    let sync = export_sync(proc, prime, 3).map_err(|e| e.to_string())?;
    Ok(Unsig {
        sync,
        prime,
        handle,
    })
}

/// Runs the ABI part. Errors are failures of the model's own set-up (never
/// a case result).
pub fn run_abi() -> Result<BTreeMap<String, Outcome>, String> {
    let ex = Exporters::new()?;
    let proc = Process::new(1);
    let p = &*proc;
    let mut o = Out(BTreeMap::new());
    let heap = |fl: u32| ex.heap_alloc(p, BUF_SIZE, fl, 0);
    let heap_ok = |fl: u32| heap(fl).map_err(|e| format!("heap alloc: {}", errno_name(e.get())));

    // sync
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    let b2 = heap_ok(O_RDWR | O_CLOEXEC)?;
    o.call("sync.end_without_start", sync(p, b2, 6), "");
    let _ = p.close(b2);
    for (id, f) in [
        ("sync.flags_1", 1u64),
        ("sync.flags_2", 2),
        ("sync.flags_3", 3),
        ("sync.flags_5", 5),
        ("sync.flags_6", 6),
        ("sync.flags_7", 7),
        ("sync.flags_0", 0),
        ("sync.flags_4", 4),
        ("sync.flags_8", 8),
        ("sync.flags_9", 9),
        ("sync.read_bit32", 1 | (1 << 32)),
        ("sync.read_bit63", 1 | (1 << 63)),
        ("sync.flags_all", !0),
        ("sync.flags_0x17", 0x17),
    ] {
        o.call(id, sync(p, b, f), "");
    }
    o.call("sync.null", p.ioctl(b, uapi::DMA_BUF_IOCTL_SYNC, 0), "");
    let wrong = uapi::ioc(1, b'b', 0, 4);
    let a = p.user_alloc(&1u32.to_le_bytes());
    o.call("sync.wrong_size", p.ioctl(b, wrong, a), "");
    p.user_free(a);
    let _ = p.close(b);

    // name
    let n31 = b"abcdefghijklmnopqrstuvwxyz01234";
    let n32 = b"abcdefghijklmnopqrstuvwxyz012345";
    for (ab, cmd) in [
        ('a', uapi::DMA_BUF_SET_NAME_A),
        ('b', uapi::DMA_BUF_SET_NAME_B),
    ] {
        let b = heap_ok(O_RDWR | O_CLOEXEC)?;
        o.emit(&format!("name.{ab}.before"), 0, 0, fdinfo(p, b, &["name"]));
        let r = set_name(p, b, cmd, n31);
        o.call(&format!("name.{ab}.len31"), r, fdinfo(p, b, &["name"]));
        let r = set_name(p, b, cmd, n32);
        o.call(
            &format!("name.{ab}.len32_keeps_old"),
            r,
            fdinfo(p, b, &["name"]),
        );
        let r = set_name(p, b, cmd, b"");
        o.call(&format!("name.{ab}.empty"), r, fdinfo(p, b, &["name"]));
        o.call(&format!("name.{ab}.bad_pointer"), p.ioctl(b, cmd, 8), "");
        o.call(&format!("name.{ab}.null"), p.ioctl(b, cmd, 0), "");
        let _ = p.close(b);
    }
    {
        let b = heap_ok(O_RDWR | O_CLOEXEC)?;
        o.emit("name.link_unnamed", 0, 0, fdlink(p, b));
        let _ = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"abc");
        o.emit("name.link_named", 0, 0, fdlink(p, b));
        let _ = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"");
        o.emit("name.link_empty_name", 0, 0, fdlink(p, b));
        let _ = p.close(b);
    }
    let b = heap_ok(O_RDONLY | O_CLOEXEC)?;
    let r = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"ro");
    o.call("name.readonly_fd", r, fdinfo(p, b, &["name"]));
    let r = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"\xff\xfe");
    o.call("name.non_utf8", r, fdinfo(p, b, &["name"]));
    let r = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"a b\tc");
    o.call("name.whitespace", r, fdinfo(p, b, &["name"]));
    let _ = p.close(b);

    // fdinfo
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    o.emit("fdinfo.system_rw", 0, 0, fdinfo(p, b, FD_KEYS));
    o.emit("fdinfo.keys", 0, 0, fdinfo_keys(p, b));
    let d = p
        .install(p.get_file(b).map_err(|e| e.to_string())?, false)
        .map_err(|e| e.to_string())?;
    o.emit("fdinfo.count_after_dup", 0, 0, fdinfo(p, b, FD_KEYS));
    let _ = p.close(d);
    let _ = p.close(b);
    let b = heap_ok(O_RDONLY | O_CLOEXEC)?;
    o.emit("fdinfo.system_ro", 0, 0, fdinfo(p, b, FD_KEYS));
    let _ = p.close(b);
    let b = heap_ok(O_WRONLY)?;
    o.emit("fdinfo.system_wo_nocloexec", 0, 0, fdinfo(p, b, FD_KEYS));
    let _ = p.close(b);

    // heap
    let mut alloc = |id: &str, len: u64, fl: u32, hf: u64, keys: Option<&[&str]>| match ex
        .heap_alloc(p, len, fl, hf)
    {
        Ok(fd) => {
            let x = keys.map(|k| fdinfo(p, fd, k)).unwrap_or_default();
            let _ = p.close(fd);
            o.emit(id, 0, 0, &x);
        }
        Err(e) => o.emit(id, -1, e.get(), ""),
    };
    alloc("heap.len_1", 1, O_RDWR | O_CLOEXEC, 0, Some(FD_KEYS));
    alloc("heap.len_0", 0, O_RDWR, 0, None);
    alloc("heap.heap_flags_1", BUF_SIZE, O_RDWR, 1, None);
    alloc(
        "heap.fd_flags_nonblock",
        BUF_SIZE,
        O_RDWR | O_NONBLOCK,
        0,
        None,
    );
    alloc("heap.fd_flags_append", BUF_SIZE, O_RDWR | O_APPEND, 0, None);
    alloc("heap.len_5000_rounds_up", 5000, O_RDWR, 0, Some(&["size"]));

    // seek, read/write
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    for (id, off, wh) in [
        ("seek.end_0", 0, uapi::SEEK_END),
        ("seek.set_0", 0, uapi::SEEK_SET),
        ("seek.cur_0", 0, uapi::SEEK_CUR),
        ("seek.set_1", 1, uapi::SEEK_SET),
        ("seek.end_1", 1, uapi::SEEK_END),
        ("seek.end_minus_1", -1, uapi::SEEK_END),
    ] {
        o.call(id, p.lseek(b, off, wh).map(|v| v as i64), "");
    }
    o.call("rw.read", p.read(b, 16).map(|v| v as i64), "");
    o.call("rw.write", p.write(b, &[0; 16]).map(|v| v as i64), "");
    o.call("rw.pread", p.pread(b, 16, 0).map(|v| v as i64), "");
    o.call("rw.pwrite", p.pwrite(b, &[0; 16], 0).map(|v| v as i64), "");
    let _ = p.close(b);

    // poll
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    o.emit("poll.idle_in", 0, 0, pollbits(p, b, POLLIN));
    o.emit("poll.idle_out", 0, 0, pollbits(p, b, POLLOUT));
    o.emit("poll.idle_inout", 0, 0, pollbits(p, b, POLLIN | POLLOUT));
    o.emit("poll.idle_pri", 0, 0, pollbits(p, b, POLLPRI));
    let _ = p.close(b);

    // mmap (probe.c `case_mmap`)
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    let pages = BUF_SIZE / PAGE;
    let (rw, ro, rx) = (PROT_READ | PROT_WRITE, PROT_READ, PROT_READ | PROT_EXEC);
    for (id, prot, flags, pgoff, n) in [
        ("mmap.shared_rw", rw, MAP_SHARED, 0, pages),
        ("mmap.shared_ro", ro, MAP_SHARED, 0, pages),
        ("mmap.private", rw, MAP_PRIVATE, 0, pages),
        ("mmap.offset_1_page", rw, MAP_SHARED, 1, pages - 1),
        ("mmap.past_end", ro, MAP_SHARED, pages, 1),
        ("mmap.too_long", ro, MAP_SHARED, 0, pages + 1),
        ("mmap.prot_exec", rx, MAP_SHARED, 0, pages),
    ] {
        o.call(id, p.mmap_flags(b, pgoff, n, prot, flags).map(|_| 0i64), "");
    }
    let _ = p.close(b);
    let b = heap_ok(O_RDONLY | O_CLOEXEC)?;
    let r = p.mmap_flags(b, 0, pages, rw, MAP_SHARED);
    o.call("mmap.ro_fd_write", r.map(|_| 0i64), "");
    let r = p.mmap_flags(b, 0, pages, ro, MAP_SHARED);
    o.call("mmap.ro_fd_read", r.map(|_| 0i64), "");
    let _ = p.close(b);

    // export / import
    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    for (id, f) in [
        ("export.flags_1", 1u32),
        ("export.flags_2", 2),
        ("export.flags_3", 3),
        ("export.flags_0", 0),
        ("export.flags_4", 4),
        ("export.flags_5", 5),
        ("export.flags_0x80000001", 0x8000_0001),
    ] {
        match export_sync(p, b, f) {
            Ok(s) => {
                let x = describe_sync(p, s);
                let _ = p.close(s);
                o.emit(id, 0, 0, &x);
            }
            Err(e) => o.emit(id, -1, e.errno().get(), ""),
        }
    }
    {
        let mut a = [0u8; 8];
        a[..4].copy_from_slice(&le32(1));
        a[4..].copy_from_slice(&12345i32.to_le_bytes());
        let r = p.ioctl_buf(b, uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut a);
        let fd = rd32(&a, 4) as i32;
        let x = if fd >= 0 && fd != 12345 {
            "fd=new"
        } else {
            "fd=kept"
        };
        if r.is_ok() {
            let _ = p.close(fd);
        }
        o.call("export.input_fd_ignored", r, x);
    }
    o.call(
        "export.null",
        p.ioctl(b, uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0),
        "",
    );
    let sig = export_sync(p, b, 1).map_err(|e| e.to_string())?;
    for (id, f) in [
        ("import.flags_1", 1u32),
        ("import.flags_2", 2),
        ("import.flags_3", 3),
        ("import.flags_0", 0),
        ("import.flags_4", 4),
        ("import.flags_9", 9),
        ("import.flags_0x80000001", 0x8000_0001),
    ] {
        o.call(id, import_sync(p, b, f, sig), "");
    }
    o.call("import.fd_minus_1", import_sync(p, b, 1, -1), "");
    let closed = p
        .install(p.get_file(sig).map_err(|e| e.to_string())?, false)
        .map_err(|e| e.to_string())?;
    let _ = p.close(closed);
    o.call("import.fd_closed", import_sync(p, b, 1, closed), "");
    let dn = p
        .install(File::Other("/dev/null".into()), false)
        .map_err(|e| e.to_string())?;
    o.call("import.fd_devnull", import_sync(p, b, 1, dn), "");
    let _ = p.close(dn);
    let b2 = heap_ok(O_RDWR)?;
    o.call("import.fd_dmabuf", import_sync(p, b, 1, b2), "");
    let _ = p.close(b2);
    o.call(
        "import.null",
        p.ioctl(b, uapi::DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0),
        "",
    );
    o.emit(
        "import.signalled_poll",
        0,
        0,
        pollbits(p, b, POLLIN | POLLOUT),
    );
    let _ = p.close(sig);
    let _ = p.close(b);

    // unsignalled (vgem stand-in fences)
    for (w, dir) in [(false, "read"), (true, "write")] {
        let b = heap_ok(O_RDWR | O_CLOEXEC)?;
        let u = vgem_unsig(p)?;
        o.call(
            &format!("unsig.{dir}.import"),
            import_sync(p, b, if w { 2 } else { 1 }, u.sync),
            "",
        );
        o.emit(
            &format!("unsig.{dir}.poll"),
            0,
            0,
            pollbits(p, b, POLLIN | POLLOUT),
        );
        for f in 1..=3u32 {
            let id = format!("unsig.{dir}.export_{f}");
            match export_sync(p, b, f) {
                Ok(s) => {
                    let x = describe_sync(p, s);
                    let _ = p.close(s);
                    o.emit(&id, 0, 0, &x);
                }
                Err(e) => o.emit(&id, -1, e.errno().get(), ""),
            }
        }
        o.emit(
            &format!("unsig.{dir}.sync_file_poll"),
            0,
            0,
            pollbits(p, u.sync, POLLIN),
        );
        let handle = u.handle;
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            let _ = handle.signal();
        });
        let t0 = Instant::now();
        let r = sync(p, b, 3);
        let dt = t0.elapsed();
        let _ = t.join();
        o.call(
            &format!("unsig.{dir}.sync_blocks"),
            r,
            if dt >= Duration::from_millis(300) {
                "blocked"
            } else {
                "returned-at-once"
            },
        );
        o.emit(
            &format!("unsig.{dir}.poll_after_signal"),
            0,
            0,
            pollbits(p, b, POLLIN | POLLOUT),
        );
        o.emit(
            &format!("unsig.{dir}.sync_file_poll_after_signal"),
            0,
            0,
            pollbits(p, u.sync, POLLIN),
        );
        o.emit(
            &format!("unsig.{dir}.info_after_signal"),
            0,
            0,
            describe_sync(p, u.sync),
        );
        let _ = p.close(u.sync);
        let _ = p.close(u.prime);
        let _ = p.close(b);
    }

    sync_file_cases(p, &mut o, &heap_ok)?;
    exporter_cases(p, &mut o)?;
    Ok(o.0)
}

fn merge_data(name: &[u8], fd2: i32, flags: u32, pad: u32) -> Vec<u8> {
    let mut m = vec![0u8; 48];
    m[..name.len().min(32)].copy_from_slice(&name[..name.len().min(32)]);
    m[32..36].copy_from_slice(&fd2.to_le_bytes());
    m[36..40].copy_from_slice(&(-77i32).to_le_bytes());
    m[40..44].copy_from_slice(&le32(flags));
    m[44..48].copy_from_slice(&le32(pad));
    m
}

fn sync_file_cases(
    p: &Process,
    o: &mut Out,
    heap_ok: &dyn Fn(u32) -> Result<i32, String>,
) -> Result<(), String> {
    let u1 = vgem_unsig(p)?;
    let u2 = vgem_unsig(p)?;
    o.emit("syncfile.unsignalled_info", 0, 0, describe_sync(p, u1.sync));
    o.emit(
        "syncfile.unsignalled_poll",
        0,
        0,
        pollbits(p, u1.sync, POLLIN),
    );
    o.emit(
        "syncfile.fdinfo",
        0,
        0,
        fdinfo(p, u1.sync, &["pos", "flags"]),
    );
    o.emit("syncfile.link", 0, 0, fdlink(p, u1.sync));
    o.call(
        "syncfile.lseek",
        p.lseek(u1.sync, 0, uapi::SEEK_SET).map(|v| v as i64),
        "",
    );
    o.call("syncfile.read", p.read(u1.sync, 8).map(|v| v as i64), "");
    o.call("syncfile.mmap", p.mmap(u1.sync, 0, 1).map(|_| 0i64), "");
    o.call(
        "syncfile.unknown_ioctl",
        p.ioctl(u1.sync, uapi::ioc(0, b'>', 9, 0), 0),
        "",
    );
    let a = p.user_alloc(&1u64.to_le_bytes());
    o.call(
        "syncfile.dmabuf_ioctl_on_sync_file",
        p.ioctl(u1.sync, uapi::DMA_BUF_IOCTL_SYNC, a),
        "",
    );
    p.user_free(a);

    let b = heap_ok(O_RDWR | O_CLOEXEC)?;
    let merge = |o: &mut Out, id: &str, fd: i32, m: Vec<u8>| {
        let mut m = m;
        let r = p.ioctl_buf(fd, uapi::SYNC_IOC_MERGE, &mut m);
        let fence = rd32(&m, 36) as i32;
        let x = if r.is_ok() {
            let x = describe_sync(p, fence);
            let _ = p.close(fence);
            x
        } else {
            format!("fence={fence}")
        };
        o.call(id, r, &x);
    };
    merge(
        o,
        "merge.same_fd_twice",
        u1.sync,
        merge_data(b"merged", u1.sync, 0, 0),
    );
    merge(
        o,
        "merge.two_timelines",
        u1.sync,
        merge_data(b"merged", u2.sync, 0, 0),
    );
    merge(o, "merge.bad_fd2", u1.sync, merge_data(b"merged", -1, 0, 0));
    merge(
        o,
        "merge.fd2_dmabuf",
        u1.sync,
        merge_data(b"merged", b, 0, 0),
    );
    merge(
        o,
        "merge.first_is_dmabuf",
        b,
        merge_data(b"merged", u1.sync, 0, 0),
    );
    merge(
        o,
        "merge.flags_nonzero",
        u1.sync,
        merge_data(b"merged", u2.sync, 1, 0),
    );
    merge(
        o,
        "merge.pad_nonzero",
        u1.sync,
        merge_data(b"merged", u2.sync, 0, 1),
    );
    merge(
        o,
        "merge.name_32_no_nul",
        u1.sync,
        merge_data(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", u2.sync, 0, 0),
    );
    merge(
        o,
        "merge.empty_name",
        u1.sync,
        merge_data(b"", u2.sync, 0, 0),
    );
    o.call("merge.null", p.ioctl(u1.sync, uapi::SYNC_IOC_MERGE, 0), "");
    let s1 = export_sync(p, b, 1).map_err(|e| e.to_string())?;
    let s2 = export_sync(p, b, 2).map_err(|e| e.to_string())?;
    merge(
        o,
        "merge.two_signalled",
        s1,
        merge_data(b"merged", s2, 0, 0),
    );

    // FILE_INFO on a two-fence file
    let mut m = merge_data(b"two", u2.sync, 0, 0);
    p.ioctl_buf(u1.sync, uapi::SYNC_IOC_MERGE, &mut m)
        .map_err(|e| format!("merge: {e}"))?;
    let two = rd32(&m, 36) as i32;
    let arr = p.user_alloc(&[0xa5u8; 4 * 80]);
    let info = |o: &mut Out, id: &str, num: u32, ptr: u64, flags: u32, pad: u32| {
        let _ = p.user_write(arr, &[0xa5u8; 4 * 80]);
        let mut q = vec![0u8; 56];
        q[36..40].copy_from_slice(&le32(flags));
        q[40..44].copy_from_slice(&le32(num));
        q[44..48].copy_from_slice(&le32(pad));
        q[48..56].copy_from_slice(&ptr.to_le_bytes());
        let r = p.ioctl_buf(two, uapi::SYNC_IOC_FILE_INFO, &mut q);
        let touched = p.user_read(arr, 1).map(|v| v[0] != 0xa5).unwrap_or(false);
        let x = format!(
            "name={},status={},num={},touched={}",
            cstr(&q[..32]),
            rd32(&q, 32) as i32,
            rd32(&q, 40),
            if touched { "yes" } else { "no" }
        );
        o.call(id, r, &x);
    };
    info(o, "info.count_only", 0, 0, 0, 0);
    info(o, "info.count_only_with_pointer", 0, arr, 0, 0);
    info(o, "info.exact", 2, arr, 0, 0);
    info(o, "info.larger", 4, arr, 0, 0);
    info(o, "info.too_small", 1, arr, 0, 0);
    info(o, "info.null_array", 2, 0, 0, 0);
    info(o, "info.bad_array", 2, 8, 0, 0);
    info(o, "info.flags_nonzero", 0, 0, 1, 0);
    info(o, "info.pad_nonzero", 0, 0, 0, 1);
    o.call("info.null", p.ioctl(two, uapi::SYNC_IOC_FILE_INFO, 0), "");
    {
        let _ = p.user_write(arr, &[0u8; 4 * 80]);
        let (r, _) = file_info(p, two, 2, arr);
        let fi = p.user_read(arr, 160).unwrap_or_else(|_| vec![0; 160]);
        let x = format!(
            "s0={},s1={},ts0={},flags0={}",
            rd32(&fi, 64) as i32,
            rd32(&fi, 80 + 64) as i32,
            if rd64(&fi, 72) != 0 { "set" } else { "0" },
            rd32(&fi, 68)
        );
        o.call("info.unsignalled_fields", r, &x);
    }
    p.user_free(arr);

    // SET_DEADLINE
    let deadline = |fd: i32, pad: u64| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&1000u64.to_le_bytes());
        d[8..].copy_from_slice(&pad.to_le_bytes());
        p.ioctl_buf(fd, uapi::SYNC_IOC_SET_DEADLINE, &mut d)
    };
    o.call("deadline.ok", deadline(u1.sync, 0), "");
    o.call("deadline.pad_nonzero", deadline(u1.sync, 1), "");
    o.call(
        "deadline.null",
        p.ioctl(u1.sync, uapi::SYNC_IOC_SET_DEADLINE, 0),
        "",
    );
    o.call("deadline.signalled", deadline(s1, 0), "");

    let _ = u1.handle.signal();
    o.emit("info.half_signalled", 0, 0, describe_sync(p, two));
    o.emit(
        "syncfile.half_signalled_poll",
        0,
        0,
        pollbits(p, two, POLLIN),
    );
    let _ = u2.handle.signal();
    o.emit("info.all_signalled", 0, 0, describe_sync(p, two));
    o.emit("syncfile.signalled_poll", 0, 0, pollbits(p, two, POLLIN));
    for fd in [two, s1, s2, b, u1.sync, u2.sync, u1.prime, u2.prime] {
        let _ = p.close(fd);
    }
    Ok(())
}

fn exporter_cases(p: &Process, o: &mut Out) -> Result<(), String> {
    // udmabuf: UDMABUF_CREATE with flags 0 gives an O_RDWR fd without
    // close-on-exec; vgem's PRIME export was asked for O_RDWR | O_CLOEXEC.
    for (name, exp, fl) in [
        ("udmabuf", "udmabuf", O_RDWR),
        ("vgem", "drm", O_RDWR | O_CLOEXEC),
    ] {
        let b = stand_in(p, exp, fl)?;
        o.call(&format!("exporter.{name}.sync_rw"), sync(p, b, 3), "");
        o.call(
            &format!("exporter.{name}.seek_end"),
            p.lseek(b, 0, uapi::SEEK_END).map(|v| v as i64),
            "",
        );
        o.emit(
            &format!("exporter.{name}.poll"),
            0,
            0,
            pollbits(p, b, POLLIN | POLLOUT),
        );
        let r = set_name(p, b, uapi::DMA_BUF_SET_NAME_B, b"n");
        o.call(
            &format!("exporter.{name}.set_name"),
            r,
            fdinfo(p, b, &["name"]),
        );
        let id = format!("exporter.{name}.export_sync_file");
        match export_sync(p, b, 3) {
            Ok(s) => {
                let x = describe_sync(p, s);
                let _ = p.close(s);
                o.emit(&id, 0, 0, &x);
            }
            Err(e) => o.emit(&id, -1, e.errno().get(), ""),
        }
        let _ = p.close(b);
    }
    Ok(())
}

/// `VFIO_DEVICE_FEATURE` payload as probe.c `feat_call` builds it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn feat(
    flags: u32,
    bar: u32,
    open_flags: u32,
    dflags: u32,
    nr: u32,
    ranges: &[(u64, u64)],
    argsz: u32,
) -> Vec<u8> {
    let argsz = if argsz != 0 { argsz } else { 24 + 16 * nr };
    let mut v = Vec::new();
    for w in [argsz, flags, bar, open_flags, dflags, nr] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    let mut r = [0u64; 8];
    for (i, &(a, l)) in ranges.iter().enumerate().take(4) {
        r[2 * i] = a;
        r[2 * i + 1] = l;
    }
    for w in r {
        v.extend_from_slice(&w.to_le_bytes());
    }
    // The kernel copies argsz bytes at most.
    v.truncate((argsz as usize).max(8).min(v.len()));
    v
}

/// probe.c `buf_abi`: the generic ABI of one VFIO dma-buf in a phase.
fn buf_abi(p: &Process, o: &mut Out, phase: &str, b: i32) {
    o.call(&format!("vfio.{phase}.sync"), sync(p, b, 3), "");
    let id = format!("vfio.{phase}.export_sync_file");
    match export_sync(p, b, 3) {
        Ok(s) => {
            let x = describe_sync(p, s);
            let _ = p.close(s);
            o.emit(&id, 0, 0, &x);
        }
        Err(e) => o.emit(&id, -1, e.errno().get(), ""),
    }
    o.call(
        &format!("vfio.{phase}.seek_end"),
        p.lseek(b, 0, uapi::SEEK_END).map(|v| v as i64),
        "",
    );
    o.emit(
        &format!("vfio.{phase}.poll"),
        0,
        0,
        pollbits(p, b, POLLIN | POLLOUT),
    );
    o.call(
        &format!("vfio.{phase}.set_name"),
        set_name(p, b, uapi::DMA_BUF_SET_NAME_B, phase.as_bytes()),
        "",
    );
    o.call(
        &format!("vfio.{phase}.mmap"),
        p.mmap(b, 0, 1).map(|_| 0i64),
        "",
    );
    o.call_errno(
        &format!("vfio.{phase}.vgem_import"),
        Vfio::static_import(p, b),
        "",
    );
}

/// Runs the VFIO part.
pub fn run_vfio() -> Result<BTreeMap<String, Outcome>, String> {
    let ex = Exporters::new()?;
    let vf = ex.vfio()?;
    let proc = Process::new(1);
    let p = &*proc;
    let mut o = Out(BTreeMap::new());
    o.emit("vfio.setup", 0, 0, "container=open,group=open");
    const GET: u32 = (1 << 16) | 11;
    const SET: u32 = 1 << 17;
    const PROBE: u32 = 1 << 18;
    let ok = [(0, PAGE)];
    let two = [(0, PAGE), (2 * PAGE, 2 * PAGE)];
    let f = |o: &mut Out, id: &str, payload: Vec<u8>| {
        let r = vf.feature(p, &payload);
        if let Ok(fd) = r
            && fd > 0
        {
            let _ = p.close(fd);
        }
        o.call_errno(id, r, "");
    };
    f(&mut o, "vfio.probe", feat(PROBE | GET, 0, 0, 0, 0, &[], 8));
    // A NULL argument: nothing is readable.
    f(&mut o, "vfio.null", Vec::new());
    f(&mut o, "vfio.argsz_4", feat(GET, 0, O_RDWR, 0, 1, &ok, 4));
    f(
        &mut o,
        "vfio.unknown_flag_bit",
        feat(GET | (1 << 20), 0, O_RDWR, 0, 1, &ok, 0),
    );
    f(
        &mut o,
        "vfio.get_and_set",
        feat(GET | SET, 0, O_RDWR, 0, 1, &ok, 0),
    );
    f(&mut o, "vfio.set", feat(SET | 11, 0, O_RDWR, 0, 1, &ok, 0));
    f(&mut o, "vfio.neither", feat(11, 0, O_RDWR, 0, 1, &ok, 0));
    f(
        &mut o,
        "vfio.unknown_feature",
        feat((1 << 16) | 0x7ff, 0, O_RDWR, 0, 1, &ok, 0),
    );
    f(
        &mut o,
        "vfio.payload_short",
        feat(GET, 0, O_RDWR, 0, 1, &ok, 20),
    );
    f(
        &mut o,
        "vfio.flags_nonzero",
        feat(GET, 0, O_RDWR, 1, 1, &ok, 0),
    );
    f(
        &mut o,
        "vfio.nr_ranges_0",
        feat(GET, 0, O_RDWR, 0, 0, &[], 0),
    );
    f(&mut o, "vfio.bar_6", feat(GET, 6, O_RDWR, 0, 1, &ok, 0));
    f(
        &mut o,
        "vfio.bar_absent",
        feat(GET, 2, O_RDWR, 0, 1, &ok, 0),
    );
    f(
        &mut o,
        "vfio.zero_length",
        feat(GET, 0, O_RDWR, 0, 1, &[(0, 0)], 0),
    );
    f(
        &mut o,
        "vfio.unaligned_offset",
        feat(GET, 0, O_RDWR, 0, 1, &[(1, PAGE)], 0),
    );
    f(
        &mut o,
        "vfio.unaligned_length",
        feat(GET, 0, O_RDWR, 0, 1, &[(0, 100)], 0),
    );
    f(
        &mut o,
        "vfio.past_bar_end",
        feat(GET, 0, O_RDWR, 0, 1, &[(EDU_BAR0, PAGE)], 0),
    );
    f(
        &mut o,
        "vfio.longer_than_bar",
        feat(GET, 0, O_RDWR, 0, 1, &[(0, 2 * EDU_BAR0)], 0),
    );
    f(
        &mut o,
        "vfio.offset_wraps",
        feat(GET, 0, O_RDWR, 0, 1, &[(!0 - PAGE + 1, PAGE)], 0),
    );
    f(
        &mut o,
        "vfio.length_bit63",
        feat(GET, 0, O_RDWR, 0, 1, &[(0, 1 << 63)], 0),
    );
    f(
        &mut o,
        "vfio.sum_overflows",
        feat(
            GET,
            0,
            O_RDWR,
            0,
            2,
            &[(0, !0 - PAGE + 1), (0, 2 * PAGE)],
            0,
        ),
    );
    let b = match vf.feature(p, &feat(GET, 0, O_RDWR | O_CLOEXEC, 0, 2, &two, 0)) {
        Ok(b) => {
            o.emit("vfio.export_two_ranges", 0, 0, fdinfo(p, b, FD_KEYS));
            b
        }
        Err(e) => {
            o.emit("vfio.export_two_ranges", -1, e.get(), "");
            return Err(format!(
                "the model refused the valid VFIO export ({})",
                errno_name(e.get())
            ));
        }
    };
    match vf.feature(
        p,
        &feat(GET, 0, O_RDONLY | O_APPEND | O_NONBLOCK, 0, 1, &ok, 0),
    ) {
        Ok(ro) => {
            o.emit(
                "vfio.export_open_flags",
                0,
                0,
                fdinfo(p, ro, &["flags", "size"]),
            );
            let _ = p.close(ro);
        }
        Err(e) => o.emit("vfio.export_open_flags", -1, e.get(), ""),
    }
    o.call("vfio.mmap", p.mmap(b, 0, 1).map(|_| 0i64), "");
    o.call_errno("vfio.vgem_import", Vfio::static_import(p, b), "");
    buf_abi(p, &mut o, "idle", b);
    o.call_errno("vfio.memory_off", vf.memory(false), "");
    buf_abi(p, &mut o, "memory_off", b);
    let born = vf.feature(p, &feat(GET, 0, O_RDWR | O_CLOEXEC, 0, 1, &ok, 0));
    o.call_errno("vfio.export_while_memory_off", born, "");
    o.call_errno("vfio.memory_on", vf.memory(true), "");
    buf_abi(p, &mut o, "memory_on", b);
    if let Ok(born) = born {
        buf_abi(p, &mut o, "born_revoked", born);
        let _ = p.close(born);
    }
    o.call_errno("vfio.device_reset", vf.reset(), "");
    buf_abi(p, &mut o, "after_reset", b);
    let again = vf.feature(p, &feat(GET, 0, O_RDWR | O_CLOEXEC, 0, 1, &ok, 0));
    if let Ok(fd) = again {
        let _ = p.close(fd);
    }
    o.call_errno("vfio.export_after_reset", again, "");
    o.call_errno("vfio.device_close", vf.close(), "");
    buf_abi(p, &mut o, "after_close", b);
    let _ = p.close(b);
    Ok(o.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::Part;

    fn ids(m: &BTreeMap<String, Outcome>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    fn sorted(p: Part) -> Vec<&'static str> {
        let mut v = p.cases().to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_model_answers_exactly_the_abi_case_list() {
        let m = run_abi().unwrap();
        assert_eq!(ids(&m), sorted(Part::Abi));
        assert_eq!(m["sync.null"], Outcome::new(-1, "EFAULT", ""));
        assert_eq!(m["seek.end_0"].ret, BUF_SIZE as i64);
        assert_eq!(m["unsig.write.sync_blocks"].extra, "blocked");
    }

    #[test]
    fn the_model_answers_exactly_the_vfio_case_list() {
        let m = run_vfio().unwrap();
        assert_eq!(ids(&m), sorted(Part::Vfio));
        assert_eq!(m["vfio.offset_wraps"].errno, "EOVERFLOW");
        assert_eq!(m["vfio.vgem_import"].errno, "EOPNOTSUPP");
    }
}
