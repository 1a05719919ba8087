//! The userspace ABI of dma-buf and sync_file (`uapi/linux/dma-buf.h`,
//! `uapi/linux/sync_file.h`), simulated faithfully: processes with fd
//! tables and their own user memory, the real ioctl command numbers, byte
//! payloads at user addresses, `llseek`, `poll`, `mmap` and fdinfo.
//!
//! # Objects
//!
//! | Rust | kernel |
//! |---|---|
//! | [`Process`] | a task's `files_struct` plus its address space (for ioctl payloads) |
//! | [`File`] | `struct file` of a dma-buf or a sync_file |
//! | [`Process::ioctl`] | `ioctl(2)`: `arg` is a user address in that process |
//! | [`Process::send_fd`] | `SCM_RIGHTS`: the receiver gets a new fd and a new reference |
//!
//! # Rules
//!
//! * An fd holds one file reference; `close` drops it; a dma-buf is
//!   released after the last reference in any process goes.
//! * New fds take the lowest free number; at most [`MAX_FDS`] per process
//!   (`EMFILE`).
//! * User memory is explicit: [`Process::user_alloc`] places bytes at a user
//!   address; an ioctl reading or writing outside allocated memory fails with
//!   `EFAULT` and changes nothing.
//! * Every error is the errno the kernel returns for that command; unknown
//!   commands are `ENOTTY`.

use crate::dma_buf::{self, DmaBuf, DmaDirection, MmapRequest, PollDir};
use crate::dma_fence::Fence;
use crate::dma_resv::Usage;
use crate::errno::{self, AsErrno, Errno};
use crate::sync::{Arc, Mutex};
use crate::sync_file::SyncFile;
use std::collections::BTreeMap;

/// Most fds a process may have open.
pub const MAX_FDS: i32 = 1024;

/// `_IOC` encoding.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `DMA_BUF_IOCTL_SYNC` = `_IOW('b', 0, struct dma_buf_sync)`.
pub const DMA_BUF_IOCTL_SYNC: u32 = ioc(IOC_WRITE, b'b', 0, 8);
/// `DMA_BUF_SET_NAME_A` = `_IOW('b', 1, __u32)`.
pub const DMA_BUF_SET_NAME_A: u32 = ioc(IOC_WRITE, b'b', 1, 4);
/// `DMA_BUF_SET_NAME_B` = `_IOW('b', 1, __u64)` (also `DMA_BUF_SET_NAME` on 64-bit).
pub const DMA_BUF_SET_NAME_B: u32 = ioc(IOC_WRITE, b'b', 1, 8);
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` = `_IOWR('b', 2, struct dma_buf_export_sync_file)`.
pub const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: u32 = ioc(IOC_READ | IOC_WRITE, b'b', 2, 8);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` = `_IOW('b', 3, struct dma_buf_import_sync_file)`.
pub const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: u32 = ioc(IOC_WRITE, b'b', 3, 8);
/// `SYNC_IOC_MERGE` = `_IOWR('>', 3, struct sync_merge_data)`.
pub const SYNC_IOC_MERGE: u32 = ioc(IOC_READ | IOC_WRITE, b'>', 3, 48);
/// `SYNC_IOC_FILE_INFO` = `_IOWR('>', 4, struct sync_file_info)`.
pub const SYNC_IOC_FILE_INFO: u32 = ioc(IOC_READ | IOC_WRITE, b'>', 4, 56);
/// `SYNC_IOC_SET_DEADLINE` = `_IOW('>', 5, struct sync_set_deadline)`.
pub const SYNC_IOC_SET_DEADLINE: u32 = ioc(IOC_WRITE, b'>', 5, 16);

/// `DMA_BUF_SYNC_READ`.
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE`.
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_RW`.
pub const DMA_BUF_SYNC_RW: u64 = 3;
/// `DMA_BUF_SYNC_START`.
pub const DMA_BUF_SYNC_START: u64 = 0;
/// `DMA_BUF_SYNC_END`.
pub const DMA_BUF_SYNC_END: u64 = 4;
/// `DMA_BUF_SYNC_VALID_FLAGS_MASK`.
pub const DMA_BUF_SYNC_VALID_FLAGS_MASK: u64 = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END;

/// `EPOLLIN`.
pub const EPOLLIN: u32 = 0x001;
/// `EPOLLOUT`.
pub const EPOLLOUT: u32 = 0x004;
/// `EPOLLERR`.
pub const EPOLLERR: u32 = 0x008;

/// `SEEK_SET`.
pub const SEEK_SET: i32 = 0;
/// `SEEK_CUR`.
pub const SEEK_CUR: i32 = 1;
/// `SEEK_END`.
pub const SEEK_END: i32 = 2;
/// `PROT_READ`.
pub const PROT_READ: u32 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = 0x4;
/// `MAP_SHARED`.
pub const MAP_SHARED: u32 = 0x1;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u32 = 0x2;
/// `O_CLOEXEC`.
pub const O_CLOEXEC: u32 = 0o2000000;

/// Size of `struct sync_fence_info`.
pub const SYNC_FENCE_INFO_SIZE: usize = 80;

/// An errno returned through the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} ({})", .0.name(), .0.get())]
pub struct SysError(pub Errno);

impl AsErrno for SysError {
    fn errno(&self) -> Errno {
        self.0
    }
}

impl SysError {
    fn from_err(e: &impl AsErrno) -> Self {
        SysError(e.errno())
    }
}

/// An open file.
#[derive(Clone)]
pub enum File {
    /// A dma-buf.
    DmaBuf(DmaBuf),
    /// A sync_file.
    SyncFile(Arc<SyncFile>),
    /// Any other file (for `EINVAL`/`ENOTTY` paths).
    Other(String),
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            File::DmaBuf(b) => write!(f, "File::DmaBuf({b:?})"),
            File::SyncFile(s) => write!(f, "File::SyncFile({:?})", s.fence()),
            File::Other(n) => write!(f, "File::Other({n})"),
        }
    }
}

struct FdEntry {
    file: File,
    cloexec: bool,
}

struct UserMem {
    next: u64,
    regions: BTreeMap<u64, Vec<u8>>,
}

impl UserMem {
    fn find(&self, addr: u64, len: usize) -> Option<(u64, usize)> {
        let (&base, v) = self.regions.range(..=addr).next_back()?;
        let off = usize::try_from(addr - base).ok()?;
        (off.checked_add(len)? <= v.len()).then_some((base, off))
    }
}

/// A process: fd table plus user memory.
pub struct Process {
    pid: u32,
    fds: Mutex<BTreeMap<i32, FdEntry>>,
    mem: Mutex<UserMem>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Process({})", self.pid)
    }
}

fn rd_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn rd_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn put_cstr(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl Process {
    /// A new process with an empty fd table.
    pub fn new(pid: u32) -> Arc<Process> {
        Arc::new(Process {
            pid,
            fds: Mutex::new(BTreeMap::new()),
            mem: Mutex::new(UserMem {
                next: 0x1000_0000,
                regions: BTreeMap::new(),
            }),
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Places `bytes` in user memory and returns their address.
    pub fn user_alloc(&self, bytes: &[u8]) -> u64 {
        let mut m = self.mem.lock();
        let addr = m.next;
        // Leave an unmapped page between regions so overruns fault.
        m.next += (bytes.len() as u64).div_ceil(4096).max(1) * 4096 + 4096;
        m.regions.insert(addr, bytes.to_vec());
        addr
    }

    /// Reads user memory (`copy_from_user`).
    pub fn user_read(&self, addr: u64, len: usize) -> Result<Vec<u8>, SysError> {
        let m = self.mem.lock();
        let (base, off) = m.find(addr, len).ok_or(SysError(errno::EFAULT))?;
        Ok(m.regions[&base][off..off + len].to_vec())
    }

    /// Writes user memory (`copy_to_user`).
    pub fn user_write(&self, addr: u64, bytes: &[u8]) -> Result<(), SysError> {
        let mut m = self.mem.lock();
        let (base, off) = m.find(addr, bytes.len()).ok_or(SysError(errno::EFAULT))?;
        let r = m.regions.get_mut(&base).ok_or(SysError(errno::EFAULT))?;
        r[off..off + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Frees a user allocation.
    pub fn user_free(&self, addr: u64) {
        self.mem.lock().regions.remove(&addr);
    }

    /// Installs a file at the lowest free fd (`fd_install`).
    pub fn install(&self, file: File, cloexec: bool) -> Result<i32, SysError> {
        let mut t = self.fds.lock();
        let mut fd = 0;
        for &k in t.keys() {
            if k != fd {
                break;
            }
            fd += 1;
        }
        if fd >= MAX_FDS {
            return Err(SysError(errno::EMFILE));
        }
        t.insert(fd, FdEntry { file, cloexec });
        Ok(fd)
    }

    /// `dma_buf_fd`: installs the buffer, consuming the caller's reference.
    pub fn dma_buf_fd(&self, buf: DmaBuf, flags: u32) -> Result<i32, SysError> {
        self.install(File::DmaBuf(buf), flags & O_CLOEXEC != 0)
    }

    /// The file behind an fd (a new reference).
    pub fn get_file(&self, fd: i32) -> Result<File, SysError> {
        self.fds
            .lock()
            .get(&fd)
            .map(|e| e.file.clone())
            .ok_or(SysError(errno::EBADF))
    }

    /// Whether the fd has `O_CLOEXEC`.
    pub fn is_cloexec(&self, fd: i32) -> Result<bool, SysError> {
        self.fds
            .lock()
            .get(&fd)
            .map(|e| e.cloexec)
            .ok_or(SysError(errno::EBADF))
    }

    /// `dma_buf_get`: `EBADF` for a bad fd, `EINVAL` for a non-dma-buf.
    pub fn dma_buf_get(&self, fd: i32) -> Result<DmaBuf, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(b) => Ok(b),
            _ => Err(SysError(errno::EINVAL)),
        }
    }

    /// `sync_file_get_fence`: `None` unless the fd is a sync_file.
    pub fn sync_file_get_fence(&self, fd: i32) -> Option<Fence> {
        match self.get_file(fd) {
            Ok(File::SyncFile(s)) => Some(s.fence().clone()),
            _ => None,
        }
    }

    /// `close(2)`.
    pub fn close(&self, fd: i32) -> Result<(), SysError> {
        let e = self.fds.lock().remove(&fd).ok_or(SysError(errno::EBADF))?;
        // The file reference is dropped outside the table lock: the last
        // reference runs the exporter's release.
        drop(e);
        Ok(())
    }

    /// Closes every fd (process exit).
    pub fn close_all(&self) {
        let all = std::mem::take(&mut *self.fds.lock());
        drop(all);
    }

    /// Open fds.
    pub fn fds(&self) -> Vec<i32> {
        self.fds.lock().keys().copied().collect()
    }

    /// Passes an fd to another process (`SCM_RIGHTS`): the receiver gets a
    /// new fd and a new reference.
    pub fn send_fd(&self, fd: i32, to: &Process) -> Result<i32, SysError> {
        let f = self.get_file(fd)?;
        to.install(f, true)
    }

    /// `llseek` on a dma-buf: only `SEEK_SET` or `SEEK_END` with offset 0.
    /// A sync_file has no `llseek` and no `FMODE_LSEEK`, so `vfs_llseek`
    /// answers `ESPIPE`.
    pub fn lseek(&self, fd: i32, offset: i64, whence: i32) -> Result<u64, SysError> {
        let b = match self.get_file(fd)? {
            File::DmaBuf(b) => b,
            File::SyncFile(_) => return Err(SysError(errno::ESPIPE)),
            File::Other(_) => return Err(SysError(errno::EBADF)),
        };
        match (whence, offset) {
            (SEEK_END, 0) => Ok(b.size()),
            (SEEK_SET, 0) => Ok(0),
            _ => Err(SysError(errno::EINVAL)),
        }
    }

    /// `readlink("/proc/<pid>/fd/<fd>")`: a dma-buf's dentry name comes
    /// from `dmabuffs_dname`, `/dmabuf:<name>` (an empty name when none was
    /// set); a sync_file is an anonymous inode, `anon_inode:sync_file`.
    pub fn fd_path(&self, fd: i32) -> Result<String, SysError> {
        Ok(match self.get_file(fd)? {
            File::DmaBuf(b) => format!("/dmabuf:{}", b.name().unwrap_or_default()),
            File::SyncFile(_) => "anon_inode:sync_file".to_owned(),
            File::Other(n) => n,
        })
    }

    /// `read(2)`: neither a dma-buf nor a sync_file has `read` or
    /// `read_iter`, so `vfs_read` refuses with `EINVAL` (no
    /// `FMODE_CAN_READ`).
    pub fn read(&self, fd: i32, _len: usize) -> Result<usize, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(_) | File::SyncFile(_) => Err(SysError(errno::EINVAL)),
            File::Other(_) => Ok(0),
        }
    }

    /// `write(2)`: `EINVAL` as for `read` (no `FMODE_CAN_WRITE`).
    pub fn write(&self, fd: i32, data: &[u8]) -> Result<usize, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(_) | File::SyncFile(_) => Err(SysError(errno::EINVAL)),
            File::Other(_) => Ok(data.len()),
        }
    }

    /// `pread64(2)`: both files are pseudo files without `FMODE_PREAD`,
    /// which `ksys_pread64` checks first: `ESPIPE`.
    pub fn pread(&self, fd: i32, _len: usize, _offset: u64) -> Result<usize, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(_) | File::SyncFile(_) => Err(SysError(errno::ESPIPE)),
            File::Other(_) => Ok(0),
        }
    }

    /// `pwrite64(2)`: `ESPIPE` (no `FMODE_PWRITE`).
    pub fn pwrite(&self, fd: i32, data: &[u8], _offset: u64) -> Result<usize, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(_) | File::SyncFile(_) => Err(SysError(errno::ESPIPE)),
            File::Other(_) => Ok(data.len()),
        }
    }

    /// `mmap` on a dma-buf fd, shared and read-write: range checks, then
    /// the exporter ([`Process::mmap_prot`] with `PROT_READ | PROT_WRITE`).
    pub fn mmap(&self, fd: i32, pgoff: u64, pages: u64) -> Result<(), SysError> {
        self.mmap_prot(fd, pgoff, pages, PROT_READ | PROT_WRITE)
    }

    /// `mmap(2)` of `pages` pages at page offset `pgoff`, `MAP_SHARED`, with
    /// protection `prot`. Linux 7.2 mounts the dma-buf pseudo filesystem
    /// `noexec`, so `do_mmap` refuses `PROT_EXEC` with `EPERM` before the
    /// exporter is asked (6.x allowed it).
    pub fn mmap_prot(&self, fd: i32, pgoff: u64, pages: u64, prot: u32) -> Result<(), SysError> {
        self.mmap_flags(fd, pgoff, pages, prot, MAP_SHARED)
    }

    /// `mmap(2)` with its `prot` and `flags` (`MAP_SHARED` or
    /// `MAP_PRIVATE`), in `do_mmap`'s order: a shared writable mapping of a
    /// file opened without write access is `EACCES`, a file opened without
    /// read access is `EACCES`, `PROT_EXEC` on the `noexec` dma-buf
    /// filesystem is `EPERM`; then the dma-buf core refuses private
    /// (copy-on-write) mappings and ranges past the end with `EINVAL`, and
    /// an exporter without an `mmap` op with `EINVAL`.
    pub fn mmap_flags(
        &self,
        fd: i32,
        pgoff: u64,
        pages: u64,
        prot: u32,
        flags: u32,
    ) -> Result<(), SysError> {
        let File::DmaBuf(b) = self.get_file(fd)? else {
            return Err(SysError(errno::ENODEV));
        };
        let shared = match flags & (MAP_SHARED | MAP_PRIVATE) {
            MAP_SHARED => true,
            MAP_PRIVATE => false,
            _ => return Err(SysError(errno::EINVAL)),
        };
        // O_ACCMODE of the file: 0 read-only, 1 write-only, 2 read-write.
        let acc = b.flags() & 0o3;
        if shared && prot & PROT_WRITE != 0 && acc == 0 {
            return Err(SysError(errno::EACCES));
        }
        if acc == 1 {
            return Err(SysError(errno::EACCES));
        }
        if prot & PROT_EXEC != 0 {
            return Err(SysError(errno::EPERM));
        }
        if !shared {
            return Err(SysError(errno::EINVAL));
        }
        dma_buf::mmap(&b, MmapRequest { pgoff, pages }).map_err(|e| SysError::from_err(&e))
    }

    /// `/proc/<pid>/fdinfo/<fd>`.
    pub fn fdinfo(&self, fd: i32) -> Result<String, SysError> {
        self.fdinfo_bytes(fd)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// [`Process::fdinfo`] as the kernel prints it: a name that userspace
    /// set to bytes that are not UTF-8 comes back as those bytes.
    pub fn fdinfo_bytes(&self, fd: i32) -> Result<Vec<u8>, SysError> {
        let e = {
            let t = self.fds.lock();
            let e = t.get(&fd).ok_or(SysError(errno::EBADF))?;
            (e.file.clone(), e.cloexec)
        };
        // `seq_show` (fs/proc/fd.c) prints `f_flags` with a leading 0 and
        // adds O_CLOEXEC from the fd table. A dma-buf's `f_flags` are the
        // export flags it kept (`dma_buf_getfile`: O_ACCMODE | O_NONBLOCK);
        // a sync_file's are O_RDONLY (`anon_inode_getfile(..., 0)`).
        let f_flags = match &e.0 {
            File::DmaBuf(b) => b.flags(),
            File::SyncFile(_) => 0,
            File::Other(_) => 0o2,
        };
        let mut s = format!(
            "pos:\t0\nflags:\t0{:o}\nmnt_id:\t15\n",
            if e.1 { O_CLOEXEC } else { 0 } | f_flags
        )
        .into_bytes();
        match e.0 {
            File::DmaBuf(b) => {
                s.extend_from_slice(format!("ino:\t{}\n", b.ino()).as_bytes());
                s.extend_from_slice(&dma_buf::fdinfo_bytes(&b));
            }
            File::SyncFile(_) | File::Other(_) => {}
        }
        Ok(s)
    }

    /// `poll(2)` readiness for one fd. For a dma-buf, `EPOLLIN` is ready when
    /// every Write-and-below fence has signalled and `EPOLLOUT` when every
    /// Read-and-below fence has; otherwise a callback is armed and `wake`
    /// runs with the event mask when it fires. A sync_file is `EPOLLIN` once
    /// its fence signalled.
    pub fn poll(
        &self,
        fd: i32,
        events: u32,
        wake: Arc<dyn Fn(u32) + Send + Sync>,
    ) -> Result<u32, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(b) => {
                let mut rev = 0;
                let w: Arc<dyn Fn(PollDir) + Send + Sync> = Arc::new(move |d| {
                    wake(match d {
                        PollDir::In => EPOLLIN,
                        PollDir::Out => EPOLLOUT,
                    })
                });
                if events & EPOLLIN != 0 && dma_buf::poll_dir(&b, PollDir::In, w.clone()) {
                    rev |= EPOLLIN;
                }
                if events & EPOLLOUT != 0 && dma_buf::poll_dir(&b, PollDir::Out, w) {
                    rev |= EPOLLOUT;
                }
                Ok(rev)
            }
            File::SyncFile(s) => {
                let f = s.fence().clone();
                if f.is_signaled() {
                    return Ok(events & EPOLLIN);
                }
                let _ = f.add_callback(move |_| wake(EPOLLIN));
                Ok(0)
            }
            File::Other(_) => Ok(0),
        }
    }

    /// `ioctl(2)`. `arg` is a user address in this process (or, for
    /// `DMA_BUF_SET_NAME_*`, the address of the string). Returns the
    /// ioctl's non-negative result or the errno.
    pub fn ioctl(&self, fd: i32, cmd: u32, arg: u64) -> Result<i64, SysError> {
        match self.get_file(fd)? {
            File::DmaBuf(b) => self.dma_buf_ioctl(&b, cmd, arg),
            File::SyncFile(s) => self.sync_file_ioctl(&s, cmd, arg),
            File::Other(_) => Err(SysError(errno::ENOTTY)),
        }
    }

    /// Convenience: copies `payload` to user memory, runs the ioctl with its
    /// address, and copies the (possibly updated) payload back.
    pub fn ioctl_buf(&self, fd: i32, cmd: u32, payload: &mut [u8]) -> Result<i64, SysError> {
        let addr = self.user_alloc(payload);
        let r = self.ioctl(fd, cmd, addr);
        if let Ok(back) = self.user_read(addr, payload.len()) {
            payload.copy_from_slice(&back);
        }
        self.user_free(addr);
        r
    }

    fn dma_buf_ioctl(&self, b: &DmaBuf, cmd: u32, arg: u64) -> Result<i64, SysError> {
        match cmd {
            DMA_BUF_IOCTL_SYNC => {
                let p = self.user_read(arg, 8)?;
                let flags = rd_u64(&p, 0);
                if flags & !DMA_BUF_SYNC_VALID_FLAGS_MASK != 0 {
                    return Err(SysError(errno::EINVAL));
                }
                let dir = match flags & DMA_BUF_SYNC_RW {
                    DMA_BUF_SYNC_READ => DmaDirection::FromDevice,
                    DMA_BUF_SYNC_WRITE => DmaDirection::ToDevice,
                    DMA_BUF_SYNC_RW => DmaDirection::Bidirectional,
                    _ => return Err(SysError(errno::EINVAL)),
                };
                let r = if flags & DMA_BUF_SYNC_END != 0 {
                    dma_buf::end_cpu_access(b, dir)
                } else {
                    dma_buf::begin_cpu_access(b, dir, None)
                };
                r.map(|_| 0).map_err(|e| SysError::from_err(&e))
            }
            DMA_BUF_SET_NAME_A | DMA_BUF_SET_NAME_B => {
                let name = self.strndup_user(arg, dma_buf::DMA_BUF_NAME_LEN)?;
                dma_buf::set_name(b, &name)
                    .map(|_| 0)
                    .map_err(|e| SysError::from_err(&e))
            }
            DMA_BUF_IOCTL_EXPORT_SYNC_FILE => {
                let p = self.user_read(arg, 8)?;
                let flags = u64::from(rd_u32(&p, 0));
                if flags & !DMA_BUF_SYNC_RW != 0 || flags & DMA_BUF_SYNC_RW == 0 {
                    return Err(SysError(errno::EINVAL));
                }
                let usage = Usage::usage_rw(flags & DMA_BUF_SYNC_WRITE != 0);
                let fence = b
                    .resv()
                    .get_singleton(usage)
                    .map_err(|e| SysError::from_err(&e))?
                    .unwrap_or_else(Fence::stub);
                let fd = self.install(File::SyncFile(Arc::new(SyncFile::create(fence))), true)?;
                let mut out = p.clone();
                out[4..8].copy_from_slice(&fd.to_le_bytes());
                if let Err(e) = self.user_write(arg, &out) {
                    let _ = self.close(fd);
                    return Err(e);
                }
                Ok(0)
            }
            DMA_BUF_IOCTL_IMPORT_SYNC_FILE => {
                let p = self.user_read(arg, 8)?;
                let flags = u64::from(rd_u32(&p, 0));
                let sfd = rd_u32(&p, 4) as i32;
                if flags & !DMA_BUF_SYNC_RW != 0 || flags & DMA_BUF_SYNC_RW == 0 {
                    return Err(SysError(errno::EINVAL));
                }
                let Ok(File::SyncFile(sf)) = self.get_file(sfd) else {
                    return Err(SysError(errno::EINVAL));
                };
                let usage = if flags & DMA_BUF_SYNC_WRITE != 0 {
                    Usage::Write
                } else {
                    Usage::Read
                };
                let leaves: Vec<Fence> = crate::dma_fence_unwrap::leaves(sf.fence()).collect();
                if !leaves.is_empty() {
                    let g = b.resv().lock(None).map_err(|e| SysError::from_err(&e))?;
                    let n = u32::try_from(leaves.len()).map_err(|_| SysError(errno::ENOMEM))?;
                    g.reserve_fences(n).map_err(|e| SysError::from_err(&e))?;
                    for f in &leaves {
                        g.add_fence(f, usage).map_err(|e| SysError::from_err(&e))?;
                    }
                }
                Ok(0)
            }
            _ => Err(SysError(errno::ENOTTY)),
        }
    }

    /// `strndup_user(arg, n)`: the bytes before the NUL, whatever they are;
    /// `EFAULT` if unreadable, `EINVAL` if no NUL within `n` bytes.
    fn strndup_user(&self, addr: u64, n: usize) -> Result<Vec<u8>, SysError> {
        let mut out = Vec::new();
        for i in 0..n as u64 {
            let b = self.user_read(addr.wrapping_add(i), 1)?[0];
            if b == 0 {
                return Ok(out);
            }
            out.push(b);
        }
        Err(SysError(errno::EINVAL))
    }

    fn sync_file_ioctl(&self, s: &Arc<SyncFile>, cmd: u32, arg: u64) -> Result<i64, SysError> {
        match cmd {
            SYNC_IOC_MERGE => {
                let p = self.user_read(arg, 48)?;
                let fd2 = rd_u32(&p, 32) as i32;
                let flags = rd_u32(&p, 40);
                let pad = rd_u32(&p, 44);
                if flags != 0 || pad != 0 {
                    return Err(SysError(errno::EINVAL));
                }
                let Ok(File::SyncFile(other)) = self.get_file(fd2) else {
                    return Err(SysError(errno::ENOENT));
                };
                let mut name = p[..32].to_vec();
                name[31] = 0;
                let end = name.iter().position(|&c| c == 0).unwrap_or(31);
                let name = String::from_utf8_lossy(&name[..end]).into_owned();
                let merged = SyncFile::merge(&name, s, &other);
                let fd = self.install(File::SyncFile(Arc::new(merged)), true)?;
                let mut out = p.clone();
                out[36..40].copy_from_slice(&fd.to_le_bytes());
                if let Err(e) = self.user_write(arg, &out) {
                    let _ = self.close(fd);
                    return Err(e);
                }
                Ok(0)
            }
            SYNC_IOC_FILE_INFO => {
                let p = self.user_read(arg, 56)?;
                let flags = rd_u32(&p, 36);
                let want = rd_u32(&p, 40);
                let pad = rd_u32(&p, 44);
                let ptr = rd_u64(&p, 48);
                if flags != 0 || pad != 0 {
                    return Err(SysError(errno::EINVAL));
                }
                let infos = s.info().fences;
                let n = infos.len() as u32;
                let mut status: i32;
                if want == 0 {
                    status = s.fence().get_status();
                } else {
                    if want < n {
                        return Err(SysError(errno::EINVAL));
                    }
                    status = 1;
                    let mut arr = vec![0u8; infos.len() * SYNC_FENCE_INFO_SIZE];
                    for (i, fi) in infos.iter().enumerate() {
                        let o = i * SYNC_FENCE_INFO_SIZE;
                        put_cstr(&mut arr[o..o + 32], &fi.obj_name);
                        put_cstr(&mut arr[o + 32..o + 64], &fi.driver_name);
                        arr[o + 64..o + 68].copy_from_slice(&fi.status.to_le_bytes());
                        arr[o + 68..o + 72].copy_from_slice(&fi.flags.to_le_bytes());
                        arr[o + 72..o + 80].copy_from_slice(&fi.timestamp_ns.to_le_bytes());
                        if status > 0 {
                            status = fi.status;
                        }
                    }
                    self.user_write(ptr, &arr)?;
                }
                let mut out = p.clone();
                put_cstr(&mut out[..32], &s.get_name());
                out[32..36].copy_from_slice(&status.to_le_bytes());
                out[40..44].copy_from_slice(&n.to_le_bytes());
                self.user_write(arg, &out)?;
                Ok(0)
            }
            SYNC_IOC_SET_DEADLINE => {
                let p = self.user_read(arg, 16)?;
                if rd_u64(&p, 8) != 0 {
                    return Err(SysError(errno::EINVAL));
                }
                s.fence().set_deadline(rd_u64(&p, 0));
                Ok(0)
            }
            _ => Err(SysError(errno::ENOTTY)),
        }
    }
}

/// The errnos each command can return, for property tests and callers that
/// want to validate an answer.
pub fn possible_errnos(cmd: u32) -> &'static [Errno] {
    use errno::*;
    match cmd {
        DMA_BUF_IOCTL_SYNC => &[
            EFAULT,
            EINVAL,
            EINTR,
            ERESTARTSYS,
            EAGAIN,
            EBUSY,
            ENODEV,
            EIO,
        ],
        DMA_BUF_SET_NAME_A | DMA_BUF_SET_NAME_B => &[EFAULT, EINVAL, ENOMEM],
        DMA_BUF_IOCTL_EXPORT_SYNC_FILE => &[EFAULT, EINVAL, ENOMEM, EMFILE],
        DMA_BUF_IOCTL_IMPORT_SYNC_FILE => &[EFAULT, EINVAL, ENOMEM],
        SYNC_IOC_MERGE => &[EFAULT, EINVAL, ENOENT, ENOMEM, EMFILE],
        SYNC_IOC_FILE_INFO => &[EFAULT, EINVAL, ENOMEM],
        SYNC_IOC_SET_DEADLINE => &[EFAULT, EINVAL],
        _ => &[ENOTTY],
    }
}
