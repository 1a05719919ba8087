//! A newcomer's tour of the library, as one program that checks what it
//! prints: fences, a reservation object, a dma-buf exported by the ready
//! [`SimpleExporter`], a dynamic importer told to unmap, and the userspace
//! ABI (a process, its fds, ioctls).
//!
//! `cargo run -p dmabuf-core --example quickstart` (CI runs it; it exits
//! non-zero if anything behaves otherwise than described).

use dmabuf_core::dma_buf::{self, AttachOps, DmaDirection, examples::SimpleExporter};
use dmabuf_core::errno;
use dmabuf_core::sync::Arc;
use dmabuf_core::sync::atomic::{AtomicU64, Ordering};
use dmabuf_core::uapi::{self, File, Process};
use dmabuf_core::{DmaResv, FenceContext, Usage};
use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    // 1. Fences on a timeline.
    let ring = FenceContext::named("tour-gpu", "ring0");
    let (job, job_done) = ring.create();
    println!(
        "fence {}:{} pending: {}",
        job.context(),
        job.seqno(),
        job.describe()
    );

    // 2. The buffer's reservation object records the job as a writer.
    let (buf, exporter) = SimpleExporter::export("tour-exporter", 0x4000_0000, 4 * 4096)?;
    {
        let g = buf.resv().lock(None)?;
        g.reserve_fences(1)?;
        g.add_fence(&job, Usage::Write)?;
    }
    assert!(!buf.resv().test_signaled(Usage::Write));

    // 3. A dynamic importer that unmaps when told to.
    let told = Arc::new(AtomicU64::new(0));
    let t = told.clone();
    let attach = dma_buf::dynamic_attach(
        &buf,
        "tour-importer",
        Some(AttachOps {
            allow_peer2peer: true,
            invalidate_mappings: Some(Arc::new(move |_, _| {
                t.fetch_add(1, Ordering::SeqCst);
            })),
        }),
    )?;
    let g = buf.resv().lock(None)?;
    let mapping = dma_buf::map_attachment(&attach, DmaDirection::Bidirectional, &g)?;
    println!(
        "mapped: {:?} ({} bytes)",
        mapping.sg_table().entries,
        mapping.sg_table().len()
    );
    let n = dma_buf::invalidate_mappings(&buf, &g)?;
    println!("invalidate_mappings told {n} importer(s)");
    assert_eq!(told.load(Ordering::SeqCst), 1);
    dma_buf::unmap_attachment(&attach, mapping, &g)?;
    drop(g);

    // 4. Userspace: the buffer as an fd in a process.
    let p = Process::new(1);
    let fd = p.dma_buf_fd(buf.clone(), uapi::O_CLOEXEC)?;
    let name = p.user_alloc(b"tour\0");
    p.ioctl(fd, uapi::DMA_BUF_SET_NAME_B, name)?;
    print!("{}", p.fdinfo(fd)?);
    // EXPORT_SYNC_FILE(WRITE) waits for the writer: the job's fence.
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&(uapi::DMA_BUF_SYNC_WRITE as u32).to_le_bytes());
    p.ioctl_buf(fd, uapi::DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &mut payload)?;
    let sfd = i32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let File::SyncFile(sf) = p.get_file(sfd)? else {
        return Err("EXPORT_SYNC_FILE gave no sync_file".into());
    };
    println!("sync_file {sfd}: {} (poll {:#x})", sf.get_name(), sf.poll());
    job_done.signal()?;
    assert_eq!(sf.poll(), dmabuf_core::sync_file::EPOLLIN);
    println!("after the job: {} (poll {:#x})", sf.get_name(), sf.poll());
    assert_eq!(
        p.mmap_prot(fd, 0, 1, uapi::PROT_READ | uapi::PROT_EXEC),
        Err(uapi::SysError(errno::EPERM)),
        "Linux 7.2: no executable mappings of a dma-buf"
    );
    p.close(sfd)?;
    p.close(fd)?;

    // 5. Tear down: detach, drop the last reference, the exporter releases.
    dma_buf::detach(&buf, &attach)?;
    drop(buf);
    assert!(exporter.released());
    println!(
        "exporter saw {} attach, {} map, {} unmap; released",
        exporter.attaches(),
        exporter.maps(),
        exporter.unmaps()
    );
    // A reservation object of one's own works the same way.
    let resv = DmaResv::new();
    resv.lock(None)?.reserve_fences(0)?;
    Ok(())
}
